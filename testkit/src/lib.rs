//! Test support for stowage: a strict in-memory Kubernetes API server, object fixtures and a
//! deadline-bounded wait helper. A dev-dependency only; never linked into the binary.
//!
//! # The API server
//!
//! [`ApiServer`] speaks the real Kubernetes REST protocol over HTTP on `127.0.0.1:<random>`,
//! so the code under test talks to it through an ordinary [`kube::Client`]
//! ([`ApiServer::client`]) or, as a child process, through a kubeconfig
//! ([`ApiServer::write_kubeconfig`]). It is strict where a lax fake would let bugs through
//! that a real cluster would catch:
//!
//! ```text
//!   kube::Client ──HTTP──▶ handlers (routing, faults, query parsing)
//!                              │
//!                              ▼  one lock
//!                          ops (verbs, admission, validation, cascades)
//!                              │
//!                              ▼
//!                          store ── one resourceVersion counter, bounded change history
//!                              │                       │
//!                              └──── broadcast ───▶ watch streams (ndjson, bookmarks)
//! ```
//!
//! Served kinds (a data table, not code per kind): `v1` namespaces, nodes, pods (with
//! `pods/binding`), persistentvolumes, persistentvolumeclaims, events, configmaps, secrets;
//! `storage.k8s.io/v1` storageclasses and csidrivers, and csistoragecapacities in `v1`
//! (`ApiServerBuilder::csi_storage_capacity_versions` picks `v1beta1`/`v1alpha1` instead, to
//! play an older server; `storageClassName` required, it and `nodeTopology` immutable);
//! `coordination.k8s.io/v1` leases; `apps/v1` deployments (stored only: no pods are made);
//! `events.k8s.io/v1`
//! events (stored once, converted like the real server); `apiextensions.k8s.io/v1`
//! customresourcedefinitions. Creating a CRD serves its group, versions and plural at once
//! (namespaced or cluster-scoped, with `/status` if declared); deleting it removes its
//! objects and then the endpoints. Discovery (`/api`, `/apis`, per-group documents and
//! aggregated discovery v2) and `/version` follow, so `kube::Discovery` works.
//!
//! What behaves as on a real cluster:
//!
//! * **resourceVersion**: one global, monotonic counter, like etcd's revision. Lists carry
//!   it; `resourceVersionMatch=Exact`, a `limit` with a `resourceVersion` (the legacy exact
//!   read) and continue tokens read consistent snapshots from the history; versions older
//!   than the history are `410 Gone` (`Expired`). An expired continue token's `410` carries
//!   the real server's token in `metadata.continue` for the rest of the list at the latest
//!   version. A get or list at a version ahead of the server waits 3 s for it and is then
//!   `504 Timeout` (`Retry-After: 1`), an exact or limited one etcd's `500`, as on 1.19.
//! * **Lists**: label selectors (`=`, `==`, `!=`, `in`, `notin`, `exists`, `!key`, `>`, `<`),
//!   field selectors (`metadata.name`, `metadata.namespace`, and the per-kind labels of the
//!   real server, e.g. `spec.nodeName` for pods; anything else is `400`), `limit`/`continue`
//!   pagination (with `remainingItemCount`), cross-namespace lists. List items of built-in
//!   kinds carry no `apiVersion`/`kind`, as on the wire.
//! * **Watches**: ndjson `WatchEvent`s; `resourceVersion` unset or `"0"` sends the current
//!   state as ADDED first; a specific version replays the history after it, or sends an
//!   ERROR event with a `410 Expired` Status when it is too old; a version ahead of the
//!   server is no error: the watch waits and sends only later changes; `allowWatchBookmarks`
//!   (BOOKMARK every [`ApiServerBuilder::bookmark_interval`], a minute by default, and 2 s
//!   before `timeoutSeconds` ends, once something newer than the start was written);
//!   `timeoutSeconds`;
//!   `sendInitialEvents` streaming lists; selectors, with an object that stops (starts)
//!   matching sent as DELETED (ADDED). `PartialObjectMetadata` is served for metadata-only
//!   requests.
//! * **Create**: `generateName`, uid, `creationTimestamp`, `generation` for custom resources
//!   and CRDs; `409 AlreadyExists`; the namespace must exist (`404`) and not be terminating
//!   (`403`); DNS-1123 names, label and finalizer syntax (`422 Invalid`); defaults the code
//!   may read back (e.g. `schedulerName`, `volumeMode`, `reclaimPolicy`,
//!   `volumeBindingMode`) and the `DefaultStorageClass` admission plugin; status reset on
//!   create for pods, claims, volumes, namespaces and custom resources with `/status`.
//! * **Update**: optimistic concurrency (`409 Conflict` on a stale `resourceVersion`, also
//!   when a patch carries one; custom resources refuse a PUT without one, `422`),
//!   server-owned metadata preserved, `generation` bumped on spec changes, no-op writes
//!   produce no new version and no event.
//! * **Patches**: merge patch; JSON patch with the Go library's semantics (a `test` of a
//!   missing member against `null` passes, which kube-runtime's `finalizer()` relies on; a
//!   failed `test` is `422`); strategic merge and server-side apply as approximated below;
//!   anything else is `415`.
//! * **Status subresource**: writes to the main resource ignore `status`, writes to `/status`
//!   ignore everything else (for every kind, as the real server does for custom resources).
//! * **Delete**: preconditions (`409`); finalizers hold the object with `deletionTimestamp`
//!   until the last one is removed (then DELETED); no new finalizers once deleting (`422`);
//!   namespace deletion empties the namespace first; background garbage collection of
//!   dependents through `ownerReferences` (`Orphan` supported). StorageObjectInUseProtection
//!   and the pvc-/pv-protection controllers: every claim and PV gets its protection
//!   finalizer at creation; a deleted claim stays Terminating while a pod scheduled to a node
//!   (in any phase) mounts it, a deleted PV while it is Bound. A pod bound to a node and not
//!   finished, deleted with a grace period above 0, is Terminating (`deletionTimestamp` its
//!   grace period ahead) until the kubelet stand-in confirms ([`PodTermination`]: after 1 s
//!   by default, or never, as on the real lane); a grace period of 0 removes it at once.
//! * **Validation that stowage depends on**: a `local` PV needs `nodeAffinity`; a claim's
//!   spec is immutable except `resources.requests` (when bound) and a once-only
//!   `volumeName`, with 1.19's messages; a claim's request never decreases (1.19–1.31,
//!   `field can not be less than previous value`) and grows only when bound and the class
//!   allows expansion (`403`); StorageClass parameters, provisioner, reclaim policy and
//!   binding mode are immutable; a pod's spec is immutable except images, tolerations and
//!   deadlines, and `spec.nodeName` is set through `pods/binding` (`409` when already bound);
//!   `events.k8s.io/v1` Events need `reportingController`, `reportingInstance`, `action`,
//!   `reason`, `eventTime` and a note of at most 1 KiB, and Events about cluster-scoped
//!   objects live in `kube-system` (as on Kubernetes 1.19; core/v1 ones in `default`).
//! * **Custom resources**: the CRD's structural schema prunes unknown fields (reported as
//!   `Warning` headers, or `400` with `fieldValidation=Strict`), applies defaults and checks
//!   types (integers must fit an int64, `2.0` is one), `required`, `enum`, bounds, lengths,
//!   list sizes, `pattern`, the `format`s 1.19 checks (`date-time`, `date`, `uuid`, `ipv4`,
//!   `ipv6`, `byte`; not `int32`/`int64` ranges), `x-kubernetes-list-type` uniqueness and
//!   `oneOf`/`anyOf`/`allOf`/`not`, with go-openapi's messages. CRDs need structural schemas
//!   and defaults valid against them; fields 1.19's CRD types lack (`selectableFields`)
//!   are dropped silently, as 1.19 drops them.
//! * **Errors** are `metav1.Status` objects with the real codes, reasons and message shapes,
//!   so kube-rs surfaces them as `kube::Error::Api`.
//!
//! # Approximations (documented, deliberate)
//!
//! * **Server-side apply** (`application/apply-patch+yaml`, `fieldManager` required): the
//!   applied configuration is merged into the live object (maps deep-merge, lists the
//!   real types key — containers, conditions, finalizers, CRD `x-kubernetes-list-type: map`
//!   — merge by key, other lists are replaced) and creates the object if absent. Ownership
//!   is tracked only for *apply* managers (recorded in `managedFields` as `FieldsV1`): a
//!   manager that stops applying a field removes it unless another applier owns it;
//!   applying a field another applier owns with a different value is a `409` listing the
//!   fields, unless `force=true`. A non-apply write that changes an applied field takes it
//!   away from its applier (as the real server does), but non-apply writers get no
//!   managedFields entries, so an apply never conflicts with them. A body carrying
//!   `managedFields` is a `400`, a stale `resourceVersion` a `409`; `/status` applies own
//!   status fields separately from the main resource's.
//! * **Strategic merge patch**: a merge patch in which the lists Kubernetes marks
//!   `patchStrategy: merge` merge by key, `metadata.finalizers` merges as a set, and the
//!   `$patch: delete|replace` and `$deleteFromPrimitiveList` directives work;
//!   `$retainKeys` and `$setElementOrder` are ignored. Custom resources reject it (`415`),
//!   as on a real cluster.
//! * **Asynchronous controllers run synchronously**: namespace cleanup, CRD establishment and
//!   cleanup, and garbage collection happen within the request that triggers them.
//!   `Foreground` propagation behaves like `Background`.
//! * No kubelet: Terminating pods go when the stand-in says (see above; also when the garbage
//!   collector or a namespace's deletion deleted them), and pods never run.
//! * No authentication, authorization, admission webhooks, CEL rules, CRD conversion webhooks (versions differ only in `apiVersion`, like
//!   the `None` strategy), protobuf, or `Table` output. Unknown fields of built-in kinds
//!   are kept rather than dropped.
//!
//! # Faults and observation
//!
//! [`ApiServer::faults`] fails a fraction of writes with `500` or `429` (with
//! `Retry-After`), ends watch streams early (periodically or at once), delays responses, all
//! from a seedable generator, and counts what it injected. kube-rs retries `429`s by default
//! (honouring `Retry-After`); [`ApiServer::config`] gives a client configuration to change
//! that. [`ApiServer::request_counts`] counts requests per verb and resource, and
//! [`ApiServer::compact`] expires the history like an etcd compaction.
//!
//! # Scheduler and PV-controller stand-in
//!
//! [`Scheduler`] ([`scheduler`]) plays kube-scheduler (with an optional HTTP extender, called
//! as the real one calls it) and the PV controller's binding, so a test can run the
//! WaitForFirstConsumer flow end to end: `Scheduler::start(server.client(), config)`.
//!
//! # Real processes
//!
//! [`e2e`] starts the real `stowage` binary in any role against a [`e2e::Cluster`]: this
//! in-memory server, or with `STOWAGE_E2E=real` a real Kubernetes control plane of the
//! test's own ([`real`]: etcd, kube-apiserver, kube-controller-manager, kube-scheduler).
//! Processes log to files (printed when the test panics), can be SIGKILLed and restarted,
//! and are killed when dropped.
//!
//! # Fixtures and waiting
//!
//! [`fixtures`] has builders for the objects tests create; [`wait_for`] and [`wait_until`]
//! poll a condition until a deadline, so tests never sleep to wait.
//!
//! ```no_run
//! use std::time::Duration;
//! use k8s_openapi::api::core::v1::PersistentVolumeClaim;
//! use kube::{Api, api::PostParams};
//! use stowage_testkit::{ApiServer, fixtures::pvc, wait_for};
//!
//! # async fn example() -> anyhow::Result<()> {
//! let server = ApiServer::start().await?;
//! let claims: Api<PersistentVolumeClaim> = Api::namespaced(server.client(), "default");
//! claims.create(&PostParams::default(), &pvc("default", "data").size("10Gi").class("local").build()).await?;
//! wait_for(Duration::from_secs(5), "the claim exists", || async {
//!     claims.get_opt("data").await.ok().flatten().is_some()
//! })
//! .await?;
//! # Ok(()) }
//! ```

mod apiserver;
pub mod e2e;
pub mod fixtures;
pub mod net;
pub mod real;
pub mod scheduler;
mod wait;

pub use apiserver::{
    ApiServer, ApiServerBuilder, FaultCounts, Faults, PodTermination, WriteFailure,
};
pub use scheduler::{ExtenderConfig, Scheduler, SchedulerConfig};
pub use wait::{wait_for, wait_until};

/// `btrfs qgroup show <args>`'s output, run again until the tool succeeds. It walks the
/// quota tree in several searches and cross-checks them, so a qgroup that another test on
/// the same scratch filesystem creates or destroys in between makes it fail ("cannot find
/// the qgroup", "Could not search B-tree … Input/output error") although every ioctl
/// succeeded. Fifty failures in a row are no such race, and panic with the last one.
pub fn btrfs_qgroup_show(args: &[&str]) -> String {
    let args: Vec<&str> = ["qgroup", "show"].iter().chain(args).copied().collect();
    let mut last = None;
    for _ in 0..50 {
        let out = std::process::Command::new("btrfs")
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("btrfs {args:?}: {e}"));
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        last = Some(out);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("btrfs {args:?} failed 50 times in a row, the last: {last:?}")
}

/// Whether the tests run under CI: `CI` set to anything but empty, `0` or `false` (most CI
/// systems set `CI=true`, some `CI=1`). Under CI a test whose environment is missing (the
/// scratch btrfs, Prometheus) fails instead of printing SKIP and passing.
pub fn in_ci() -> bool {
    ci_value(std::env::var("CI").ok().as_deref())
}

fn ci_value(value: Option<&str>) -> bool {
    value.is_some_and(|v| !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false"))
}

#[cfg(test)]
mod ci_tests {
    #[test]
    fn ci_is_on_for_true_and_1_and_off_when_unset_empty_0_or_false() {
        for (value, on) in [
            (Some("true"), true),
            (Some("1"), true),
            (Some("yes"), true),
            (Some("TRUE"), true),
            (None, false),
            (Some(""), false),
            (Some("0"), false),
            (Some("false"), false),
            (Some("False"), false),
        ] {
            assert_eq!(super::ci_value(value), on, "CI={value:?}");
        }
    }
}
