//! Test-only crash points: the agent and the controller abort at a named point between two
//! durable steps when `STOWAGE_CRASH_POINT=<name>` is set, so a test can prove that a
//! process killed in that window converges once restarted.
//!
//! ```text
//!   STOWAGE_CRASH_POINT=agent.create.made  stowage agent ...
//!     start:  init(Role::Agent) reads the variable once, logs a loud warning
//!     create: driver.create() ─▶ hit(AGENT_CREATE_MADE) ─▶ abort()  (status never written)
//! ```
//!
//! The abort is `std::process::abort()`: no destructors, no flushing, no Lease release,
//! the same as SIGKILL from the process's point of view. The variable is deliberately not a
//! command-line flag (it is not in `--help`): nobody should find it while configuring a
//! cluster. It is read once, into a process-wide cell, because a crash point sits deep in
//! a driver where threading a context through would cost every caller for the sake of a
//! test; the cell holds nothing but the armed name.
//!
//! Every point is listed in [`POINTS`], so `tests/crash_points.rs` walks all of them and
//! fails for one that is never reached.

use std::sync::OnceLock;

/// The environment variable naming the point to abort at.
pub const ENV: &str = "STOWAGE_CRASH_POINT";

/// Which process a point lives in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `stowage agent`.
    Agent,
    /// `stowage controller`.
    Controller,
}

/// One crash point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Point {
    /// The name `STOWAGE_CRASH_POINT` takes.
    pub name: &'static str,
    /// The process it is in.
    pub role: Role,
    /// The window it opens: what is durable, what is not yet.
    pub window: &'static str,
}

/// The staging directory (btrfs: subvolume, limited) is set up, not renamed into place.
pub const AGENT_CREATE_STAGED: &str = "agent.create.staged";
/// The volume directory or subvolume is in place; the LocalVolume status is not written.
pub const AGENT_CREATE_MADE: &str = "agent.create.made";
/// The qgroup limit is raised (hostpath: the directory checked); the status is not written.
pub const AGENT_GROW_RAISED: &str = "agent.grow.raised";
/// The data is archived; the agent's finalizer is still on the LocalVolume.
pub const AGENT_DELETE_ARCHIVED: &str = "agent.delete.archived";
/// The data is deleted; the agent's finalizer is still on the LocalVolume.
pub const AGENT_DELETE_DELETED: &str = "agent.delete.deleted";
/// The LocalVolume is created; the PV is not.
pub const CONTROLLER_PROVISION_VOLUME_CREATED: &str = "controller.provision.volume-created";
/// The PV is created; the PV controller has not bound the claim, no Event is recorded.
pub const CONTROLLER_PROVISION_PV_CREATED: &str = "controller.provision.pv-created";
/// `selected-node` is removed from a claim that does not fit; no Event is recorded.
pub const CONTROLLER_RESCHEDULE_NODE_REMOVED: &str = "controller.reschedule.node-removed";
/// The LocalVolume of a released PV is deleted; the PV is not, its finalizer stays.
pub const CONTROLLER_RELEASE_VOLUME_DELETED: &str = "controller.release.volume-deleted";
/// The released PV is deleted (it carries a deletion timestamp); its finalizer stays.
pub const CONTROLLER_RELEASE_PV_DELETED: &str = "controller.release.pv-deleted";
/// The LocalVolume's size is raised; the claim has no Resizing condition, the PV the old size.
pub const CONTROLLER_EXPAND_VOLUME_GROWN: &str = "controller.expand.volume-grown";
/// The PV has the new capacity; the claim's status has not.
pub const CONTROLLER_EXPAND_PV_GROWN: &str = "controller.expand.pv-grown";
/// NFS: the claim's directory is made on its server; the PV is not created.
pub const CONTROLLER_NFS_DIR_MADE: &str = "controller.nfs.dir-made";
/// NFS: the released PV's directory is deleted or archived; the PV is not deleted.
pub const CONTROLLER_NFS_DIR_RELEASED: &str = "controller.nfs.dir-released";

/// Every crash point, in the order of a volume's life.
pub const POINTS: &[Point] = &[
    Point {
        name: AGENT_CREATE_STAGED,
        role: Role::Agent,
        window: "staging directory or subvolume set up, not renamed into place",
    },
    Point {
        name: AGENT_CREATE_MADE,
        role: Role::Agent,
        window: "volume made, LocalVolume status not written",
    },
    Point {
        name: AGENT_GROW_RAISED,
        role: Role::Agent,
        window: "limit raised, LocalVolume status not written",
    },
    Point {
        name: AGENT_DELETE_ARCHIVED,
        role: Role::Agent,
        window: "data archived, finalizer not removed",
    },
    Point {
        name: AGENT_DELETE_DELETED,
        role: Role::Agent,
        window: "data deleted, finalizer not removed",
    },
    Point {
        name: CONTROLLER_PROVISION_VOLUME_CREATED,
        role: Role::Controller,
        window: "LocalVolume created, PV not created",
    },
    Point {
        name: CONTROLLER_PROVISION_PV_CREATED,
        role: Role::Controller,
        window: "PV created, claim not bound yet",
    },
    Point {
        name: CONTROLLER_RESCHEDULE_NODE_REMOVED,
        role: Role::Controller,
        window: "selected-node removed, no Event recorded",
    },
    Point {
        name: CONTROLLER_RELEASE_VOLUME_DELETED,
        role: Role::Controller,
        window: "LocalVolume deleted, PV and its finalizer still there",
    },
    Point {
        name: CONTROLLER_RELEASE_PV_DELETED,
        role: Role::Controller,
        window: "PV deleted, its finalizer not removed",
    },
    Point {
        name: CONTROLLER_EXPAND_VOLUME_GROWN,
        role: Role::Controller,
        window: "LocalVolume size raised, claim and PV not updated",
    },
    Point {
        name: CONTROLLER_EXPAND_PV_GROWN,
        role: Role::Controller,
        window: "PV capacity raised, claim status not updated",
    },
    Point {
        name: CONTROLLER_NFS_DIR_MADE,
        role: Role::Controller,
        window: "NFS directory made, PV not created",
    },
    Point {
        name: CONTROLLER_NFS_DIR_RELEASED,
        role: Role::Controller,
        window: "NFS directory deleted or archived, PV not deleted",
    },
];

static ARMED: OnceLock<Option<&'static str>> = OnceLock::new();

/// Why [`init`] refused the variable.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The variable names no point of this role.
    #[error(
        "{ENV}={value:?} is not a crash point of the {role:?} role (known: {known}); unset the variable, it is for tests only"
    )]
    Unknown {
        /// The value given.
        value: String,
        /// The role starting.
        role: Role,
        /// The points of that role, comma-separated.
        known: String,
    },
}

/// Reads [`ENV`] once for `role` and arms the point it names, logging loudly. Unset or
/// empty: nothing is armed. A name that is not a point of `role` is an error, so a typo in a
/// test cannot pass as "converged without crashing".
pub fn init(role: Role) -> Result<(), Error> {
    let value = std::env::var(ENV).unwrap_or_default();
    let armed = if value.is_empty() {
        None
    } else {
        let Some(point) = POINTS.iter().find(|p| p.name == value && p.role == role) else {
            return Err(Error::Unknown {
                value,
                role,
                known: POINTS
                    .iter()
                    .filter(|p| p.role == role)
                    .map(|p| p.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        tracing::warn!(
            point = point.name,
            window = point.window,
            "{ENV} is set: this process ABORTS at that crash point (test-only switch; never set it in a cluster)"
        );
        Some(point.name)
    };
    let _ = ARMED.set(armed);
    Ok(())
}

/// Aborts the process if `name` is the armed point; does nothing otherwise (and always
/// when [`init`] was not called, as in unit tests).
pub fn hit(name: &'static str) {
    if ARMED.get().copied().flatten() == Some(name) {
        // stderr is unbuffered: the line is out before the abort.
        eprintln!("crash point {name} reached: aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_names_are_unique_and_prefixed_by_their_role() {
        let mut names: Vec<&str> = POINTS.iter().map(|p| p.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), POINTS.len(), "duplicate crash point names");
        for p in POINTS {
            let prefix = match p.role {
                Role::Agent => "agent.",
                Role::Controller => "controller.",
            };
            assert!(p.name.starts_with(prefix), "{} is not {prefix}*", p.name);
            assert!(!p.window.is_empty());
        }
    }

    /// The integration test proves each point is reached; this one catches a point
    /// declared but left out of [`POINTS`], or listed but never placed in the code.
    #[test]
    fn every_declared_point_is_listed_and_placed_in_the_code() {
        let sources = [
            include_str!("agent/reconcile.rs"),
            include_str!("agent/driver/btrfs.rs"),
            include_str!("controller/claim.rs"),
            include_str!("controller/release.rs"),
            include_str!("controller/expand.rs"),
            include_str!("controller/nfs_volumes.rs"),
        ]
        .concat();
        let declared: Vec<(&str, &str)> = include_str!("crash.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("pub const "))
            .filter_map(|l| l.split_once(": &str = \""))
            .filter(|(ident, _)| *ident != "ENV")
            .map(|(ident, rest)| (ident, rest.trim_end_matches("\";")))
            .collect();
        assert_eq!(declared.len(), POINTS.len(), "declared: {declared:?}");
        for (ident, name) in declared {
            assert!(
                POINTS.iter().any(|p| p.name == name),
                "{name} is declared but not in POINTS"
            );
            assert!(
                sources.contains(&format!("crash::hit(crash::{ident})")),
                "crash::{ident} is never hit"
            );
        }
    }
}
