//! An NFS-only install (issue 20, item 7): `stowage controller` with only the NFS
//! environment and without the StorageNode and LocalVolume CRDs becomes ready, provisions
//! and binds an NFS claim, says once which CRDs are missing and what they would enable,
//! puts an Event on a claim of a node-local class instead of leaving it silent, and starts
//! watching the CRDs once they are installed. Released NFS claims are archived, deleted or
//! kept as their class says, with their PV gone.
//!
//! Both lanes: testkit's strict in-memory API server (a CRD not installed is a 404, and
//! discovery lists only what is served) with its PV-controller stand-in, and a real control
//! plane with `STOWAGE_E2E=real` (TESTING.md), where kube-controller-manager binds.

// Helpers in a test crate panic on failure like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use stowage::api::{crds, names};
use stowage::cache::watch::served_local_kinds;
use stowage_testkit::e2e::{Cluster, RoleBuilder};
use stowage_testkit::fixtures::{namespace, pvc, storage_class};
use stowage_testkit::net::{free_port, get};
use stowage_testkit::scheduler::{Scheduler, SchedulerConfig};
use stowage_testkit::{wait_for, wait_until};

const NS: &str = "apps";
/// What the controller logs, once, when the CRDs are missing.
const MISSING: &str = "stowage CRDs not installed";

fn wait() -> Duration {
    if stowage_testkit::real::lane_is_real() {
        Duration::from_secs(180)
    } else {
        Duration::from_secs(30)
    }
}

/// This build's `stowage`, or the one `STOWAGE_BENCH_BINARY` names (another build, e.g. an
/// earlier commit's, on the same test).
fn stowage_binary() -> PathBuf {
    std::env::var_os("STOWAGE_BENCH_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_stowage")))
}

/// The claims' and the controller's namespaces and `classes`; on the in-memory lane also the
/// PV-controller stand-in (kube-controller-manager's runs on the real lane).
async fn prepare(
    cluster: &Cluster,
    classes: impl IntoIterator<Item = StorageClass>,
) -> Option<Scheduler> {
    let client = cluster.client();
    for ns in [NS, "stowage-system"] {
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace(ns).build())
            .await
            .unwrap();
    }
    let api: Api<StorageClass> = Api::all(client.clone());
    for class in classes {
        api.create(&PostParams::default(), &class).await.unwrap();
    }
    (!cluster.is_real()).then(|| Scheduler::start(client, SchedulerConfig::default()))
}

/// `stowage controller` configured as the NFS source design's users run it: the environment
/// variables only, the export "mounted" at `<base>/10.0.0.1`.
fn nfs_controller(cluster: &Cluster, base: &std::path::Path, port: u16) -> RoleBuilder {
    cluster
        .role(stowage_binary(), "controller")
        .arg("controller")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .arg("--nfs-mount-base")
        .arg(base)
        .env("NFS_SERVER", "10.0.0.1")
        .env("NFS_PATH", "/exports/a")
        .env("POD_NAMESPACE", "stowage-system")
        .env("POD_NAME", "controller-0")
        .env("RUST_LOG", "info")
}

async fn ready(port: u16) -> bool {
    matches!(get(port, "/readyz").await, Some((200, _)))
}

/// Claim `apps/name` once it is Bound.
async fn bound(claims: &Api<PersistentVolumeClaim>, name: &str) -> PersistentVolumeClaim {
    wait_until(wait(), &format!("claim {NS}/{name} is Bound"), || async {
        claims
            .get(name)
            .await
            .ok()
            .filter(|c| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn an_nfs_only_install_binds_nfs_claims_without_the_local_crds_and_says_so_once() {
    let cluster = Cluster::start().await.unwrap();
    let client = cluster.client();
    // The API server serves no stowage.io kind, as a real one without the CRDs does.
    assert_eq!(served_local_kinds(&client).await.unwrap(), [false, false]);
    let scheduler = prepare(
        &cluster,
        [
            storage_class("nfs")
                .provisioner(names::PROVISIONER_NFS)
                .reclaim("Delete")
                .build(),
            storage_class("local")
                .provisioner(names::PROVISIONER_LOCAL)
                .wait_for_first_consumer()
                .reclaim("Delete")
                .build(),
        ],
    )
    .await;

    // The environment of the source design, the export "mounted" at <base>/10.0.0.1.
    let base = cluster.dir().join("nfs");
    std::fs::create_dir_all(base.join("10.0.0.1")).unwrap();
    let port = free_port();
    let controller = nfs_controller(&cluster, &base, port)
        // Look for the CRDs again every second (60 by default).
        .env("STOWAGE_CRDS_RECHECK", "1")
        .spawn()
        .unwrap();

    // Ready without the CRDs (it used to wait for their lists forever).
    wait_for(wait(), "the controller's /readyz is 200", || ready(port))
        .await
        .unwrap();

    // An NFS claim is provisioned and bound.
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NS);
    claims
        .create(
            &PostParams::default(),
            &pvc(NS, "shared")
                .size("1Gi")
                .class("nfs")
                .access_modes(["ReadWriteMany"])
                .build(),
        )
        .await
        .unwrap();
    let bound = bound(&claims, "shared").await;
    let pv = Api::<PersistentVolume>::all(client.clone())
        .get(&format!("pvc-{}", bound.uid().unwrap()))
        .await
        .unwrap();
    let nfs = pv.spec.unwrap().nfs.unwrap();
    assert_eq!(
        (nfs.server.as_str(), nfs.path.as_str()),
        ("10.0.0.1", "/exports/a/apps/shared")
    );
    assert!(base.join("10.0.0.1").join(NS).join("shared").is_dir());

    // A claim of a node-local class is told why nothing happens, and how to fix it.
    claims
        .create(
            &PostParams::default(),
            &pvc(NS, "fast").size("1Gi").class("local").build(),
        )
        .await
        .unwrap();
    let told = wait_until(
        wait(),
        "a ProvisioningFailed Event on apps/fast",
        || async {
            cluster
                .event_messages(NS, "fast", "ProvisioningFailed")
                .await
                .pop()
        },
    )
    .await
    .unwrap();
    for want in [
        "storagenodes.stowage.io",
        "localvolumes.stowage.io",
        "stowage crds | kubectl apply -f -",
        names::PROVISIONER_NFS,
    ] {
        assert!(told.contains(want), "{want:?} in {told:?}");
    }

    // Several re-checks later: still one warning, and no watch of a kind that is not there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let logs = controller.logs();
    let warnings: Vec<&str> = logs.lines().filter(|l| l.contains(MISSING)).collect();
    assert_eq!(warnings.len(), 1, "one warning about the CRDs:\n{logs}");
    for want in [
        "WARN",
        "storagenodes.stowage.io, localvolumes.stowage.io",
        "node-local volumes",
        "extender",
        "NFS provisioning is not affected",
        "stowage crds | kubectl apply -f -",
        "kubectl apply -k deploy/",
    ] {
        assert!(warnings[0].contains(want), "{want:?} in {}", warnings[0]);
    }
    assert!(
        !logs.contains("watch failed"),
        "no watch of a missing kind:\n{logs}"
    );
    assert!(ready(port).await, "still ready");

    // Installed later, the CRDs are picked up without a restart.
    cluster.install_crds(crds()).await.unwrap();
    wait_for(wait(), "the controller watches the new CRDs", || async {
        controller
            .logs()
            .contains("stowage CRDs installed; watching them")
    })
    .await
    .unwrap();
    wait_for(wait(), "the controller is ready again", || ready(port))
        .await
        .unwrap();
    let logs = controller.logs();
    assert_eq!(
        logs.lines().filter(|l| l.contains(MISSING)).count(),
        1,
        "{logs}"
    );
    drop(controller);
    if let Some(s) = scheduler {
        s.shutdown().await;
    }
}

/// The release of NFS volumes, end to end: kube-controller-manager (on the real lane) marks
/// the PV of a deleted claim Released, and stowage archives the directory (exactly one
/// `archived-<ns>-<claim>-<stamp>`), deletes it, or keeps it, as the class says, then deletes
/// the PV. The kept claim's PV goes too: the class's reclaim policy is Delete and stowage
/// keeps only the data.
#[tokio::test]
async fn released_nfs_claims_are_archived_deleted_or_kept_as_their_class_says() {
    let cluster = Cluster::start().await.unwrap();
    let client = cluster.client();
    let class = |name: &str| {
        storage_class(name)
            .provisioner(names::PROVISIONER_NFS)
            .reclaim("Delete")
    };
    let scheduler = prepare(
        &cluster,
        [
            class("nfs-archive")
                .param("archiveOnDelete", "true")
                .build(),
            class("nfs-delete").param("deleteFile", "true").build(),
            class("nfs-keep").build(),
        ],
    )
    .await;
    let base = cluster.dir().join("nfs");
    let mount = base.join("10.0.0.1");
    std::fs::create_dir_all(&mount).unwrap();
    let port = free_port();
    let controller = nfs_controller(&cluster, &base, port).spawn().unwrap();
    wait_for(wait(), "the controller's /readyz is 200", || ready(port))
        .await
        .unwrap();

    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), NS);
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    let kinds = [
        ("kept", "nfs-keep"),
        ("archived", "nfs-archive"),
        ("deleted", "nfs-delete"),
    ];
    let mut pv_names = Vec::new();
    for (name, class) in kinds {
        claims
            .create(
                &PostParams::default(),
                &pvc(NS, name)
                    .size("1Gi")
                    .class(class)
                    .access_modes(["ReadWriteMany"])
                    .build(),
            )
            .await
            .unwrap();
    }
    for (name, _) in kinds {
        let bound = bound(&claims, name).await;
        let dir = mount.join(NS).join(name);
        assert!(dir.is_dir(), "{} made", dir.display());
        // Data the release must archive, delete or keep.
        std::fs::write(dir.join("data"), name).unwrap();
        pv_names.push(format!("pvc-{}", bound.uid().unwrap()));
    }

    for (name, _) in kinds {
        claims.delete(name, &Default::default()).await.unwrap();
    }
    for pv in &pv_names {
        wait_for(wait(), &format!("PV {pv} is deleted"), || async {
            matches!(pvs.get_opt(pv).await, Ok(None))
        })
        .await
        .unwrap();
    }

    let archives: Vec<String> = std::fs::read_dir(&mount)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("archived-"))
        .collect();
    assert_eq!(archives.len(), 1, "one archive: {archives:?}");
    assert!(
        archives[0].starts_with("archived-apps-archived-"),
        "{archives:?}"
    );
    assert_eq!(
        std::fs::read_to_string(mount.join(&archives[0]).join("data")).unwrap(),
        "archived",
        "the archive holds the claim's data"
    );
    for gone in ["archived", "deleted"] {
        assert!(
            !mount.join(NS).join(gone).exists(),
            "apps/{gone}'s directory is gone from its place"
        );
    }
    assert_eq!(
        std::fs::read_to_string(mount.join(NS).join("kept").join("data")).unwrap(),
        "kept",
        "a class that neither archives nor deletes keeps the data"
    );
    drop(controller);
    if let Some(s) = scheduler {
        s.shutdown().await;
    }
}
