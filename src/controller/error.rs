//! The controller's error type: what failed, on which object, and whether a quick retry can
//! help.

use crate::api::reasons;

/// A reconcile step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("cannot {verb} {kind} {name}")]
    Api {
        /// What was attempted (`create`, `patch`, `get`, `delete`, ...).
        verb: &'static str,
        /// The kind of object.
        kind: &'static str,
        /// The object's name (`namespace/name` for namespaced ones).
        name: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// An object named as ours exists but belongs to something else (a claim re-created
    /// with the same name has a new uid, so this means someone else made it).
    #[error(
        "{kind} {name} exists but was not made for claim uid {uid}; delete it or rename the claim"
    )]
    NotOurs {
        /// The kind of object.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The uid it should have been made for.
        uid: String,
    },
    /// An NFS provisioning or deletion step failed on `object` (a claim or a PV).
    #[error("NFS volume of {object}")]
    Nfs {
        /// The claim (`namespace/name`) or PersistentVolume.
        object: String,
        /// Why.
        #[source]
        source: Box<crate::nfs::NfsError>,
    },
    /// The index said an object was gone, the API server says it is not: the watch is
    /// behind. Checked before destructive steps; retried once the watch catches up.
    #[error(
        "{kind} {name} still exists on the API server though the controller's watch saw it go; retrying once the watch catches up"
    )]
    Stale {
        /// The kind of object.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The cluster index has not finished its first list; nothing is decided on a partial view.
    #[error("the cluster index is still loading: {0}")]
    NotSynced(String),
}

/// `Result` with the controller's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The Event reason and metric label for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            // A failed step of deleting a volume is reported as Kubernetes reports it.
            Error::Api { verb, .. } if matches!(*verb, "delete" | "remove the finalizer of") => {
                reasons::VOLUME_FAILED_DELETE
            }
            Error::Api { .. } | Error::NotSynced(_) | Error::Stale { .. } => {
                reasons::PROVISIONING_FAILED
            }
            Error::NotOurs { .. } => reasons::PROVISIONING_FAILED,
            Error::Nfs { source, .. } => source.reason(),
        }
    }

    /// Whether retrying soon may succeed (API hiccups, conflicts, a cache still loading), as
    /// opposed to a state only a person can fix.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Api { .. } | Error::NotSynced(_) | Error::Stale { .. } => true,
            Error::NotOurs { .. } => false,
            Error::Nfs { source, .. } => source.is_transient(),
        }
    }

    /// Wraps an API error with what was being done.
    pub fn api(
        verb: &'static str,
        kind: &'static str,
        name: impl Into<String>,
    ) -> impl FnOnce(kube::Error) -> Error {
        let name = name.into();
        move |source| Error::Api {
            verb,
            kind,
            name,
            source,
        }
    }
}

impl Error {
    /// Whether this is an optimistic-concurrency conflict (409) of the API server: another
    /// writer got there first, the next attempt reads the new version. Not a failure.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Api { source, .. } if is_status(source, 409))
    }
}

/// Whether `e` is an API error with this HTTP status.
pub fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(verb: &'static str, code: u16) -> Error {
        let status = kube::core::Status::failure("boom", "Conflict").with_code(code);
        Error::api(verb, "PersistentVolume", "pvc-1")(kube::Error::Api(Box::new(status)))
    }

    #[test]
    fn deletion_steps_report_volume_failed_delete_and_conflicts_are_not_failures() {
        assert_eq!(
            api_error("delete", 500).reason(),
            reasons::VOLUME_FAILED_DELETE
        );
        assert_eq!(
            api_error("remove the finalizer of", 500).reason(),
            reasons::VOLUME_FAILED_DELETE
        );
        assert_eq!(
            api_error("create", 500).reason(),
            reasons::PROVISIONING_FAILED
        );
        assert!(api_error("patch", 409).is_conflict());
        assert!(!api_error("patch", 500).is_conflict());
        assert!(
            !Error::NotSynced("x".into()).is_conflict(),
            "only API conflicts"
        );
    }
}
