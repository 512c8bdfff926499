//! Ownership markers: who a directory on an NFS server was made for, so a claim never takes
//! (or a release never removes) a directory that is another claim's or a namespace's.
//!
//! The flat layout's `<namespace>-<claim>` is ambiguous: claim `db` of namespace `team` and
//! namespace `team-db` of the nested layout both use `<mount>/team-db`, and two flat claims
//! `a-b`/`c` and `a`/`b-c` both use `<mount>/a-b-c`. Reusing an existing directory (how a
//! re-created claim finds its data) would hand one tenant the other's data, and its release
//! would delete or archive it. So every directory stowage makes or adopts gets a marker:
//!
//! ```text
//!   <mount>/<namespace>/.stowage-owner            kind=namespace  (nested layout)
//!   <mount>/<namespace>/<claim>/.stowage-owner    kind=claim, layout=nested
//!   <mount>/<namespace>-<claim>/.stowage-owner    kind=claim, layout=flat
//! ```
//!
//! Format, version 1: UTF-8 text of at most 4 KiB, one `key=value` per line; blank lines
//! and lines starting with `#` are skipped; a key given twice is an error; unknown keys are
//! ignored, so a later version may add keys that only narrow adoption; a change older
//! versions must not read bumps `version`, and an unknown version is refused, not guessed.
//!
//! ```text
//!   # stowage: who this directory was made for (see SECURITY.md); do not edit or copy it
//!   version=1
//!   kind=claim                  claim | namespace
//!   layout=flat                 kind=claim only: nested | flat
//!   namespace=team              both kinds: the claim's namespace, or the namespace itself
//!   claim=db                    kind=claim only: the claim's name
//!   claim-uid=6f0c…             kind=claim only: the uid of the claim it was made for (or that
//!                               first adopted it); informational, re-created claims keep it
//!   namespace-uid=9a1b…         both kinds, optional: the uid of the namespace it was made for
//!                               (or last adopted for); absent in markers of older versions
//! ```
//!
//! `namespace-uid` came after the first markers and keeps version 1: it only narrows
//! adoption, so a version that does not know it may ignore it.
//!
//! What may use a directory (PURE decisions here; the reading and writing, relative to the
//! directory's descriptor and never through a symlink, is in [`super::dirs`]):
//!
//! ```text
//!   claim marker, same namespace, name and layout ──▶ the claim's (any claim uid: a
//!                                                     re-created claim finds its data), unless
//!                                                     its namespace uid is not the namespace's
//!   claim marker whose namespace-uid is another ────▶ refused (the namespace was deleted and
//!   than the namespace's current uid                  re-created); adopted, and the uid
//!                                                     rewritten, if the class has
//!                                                     adoptFromRecreatedNamespace: "true"
//!   claim marker of another claim or layout ────────▶ refused
//!   namespace marker ──────────────────────────────▶ refused as a claim's directory; the
//!                                                     namespace directory of that namespace
//!   no marker (older versions, the source design) ──▶ adopted as before and marked, unless a
//!                                                     top-level directory holds a marked
//!                                                     nested claim <it>/<x>: then it is that
//!                                                     namespace's directory and refused
//!   a marker that cannot be read ───────────────────▶ refused (a person looks at it)
//! ```
//!
//! The namespace's uid ([`check_namespace_uid`]) comes from the controller's watch of
//! Namespaces; it tells a namespace deleted and re-created under the same name (perhaps by
//! another tenant) from the old one, whose retained data must not go to the new one's claim
//! of the same name by default. It is written into every marker made while the uid is known,
//! and added to a marker without one when its directory is adopted (the directory is the
//! current namespace's from then on). What is not known is not checked: a marker without the
//! key (written by an older version, or while the uid was unknown) and a namespace whose uid
//! the controller does not know adopt as before. A namespace directory recording another uid
//! is adopted and rewritten, never refused: it holds only claim directories, each judged by
//! its own marker, and refusing it would stop every claim of a re-created namespace.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use super::class::PARAM_ADOPT_FROM_RECREATED_NAMESPACE;
use super::place::{ClaimName, Layout, NameError, check_label};

/// The marker's file name inside a claim or namespace directory. A dot name, so never a
/// claim, namespace or archive name.
pub const OWNER_FILE: &str = ".stowage-owner";

/// The marker format this version writes and reads.
pub const FORMAT_VERSION: &str = "1";

/// The longest marker read; anything longer is not a marker stowage wrote.
pub const MAX_MARKER_LEN: usize = 4096;

/// A claim's uid as recorded in a marker: 1–128 ASCII letters, digits and `-` (the API
/// server's uids are UUIDs), so it can never break the marker's line format.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClaimUid(String);

impl ClaimUid {
    /// Validates a claim uid.
    pub fn parse(uid: &str) -> Result<Self, NameError> {
        let ok = !uid.is_empty()
            && uid.len() <= 128
            && uid.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if ok {
            Ok(ClaimUid(uid.to_string()))
        } else {
            Err(NameError {
                what: "claim uid",
                given: uid.to_string(),
                why: "it must be 1-128 ASCII letters, digits and '-'".to_string(),
            })
        }
    }

    /// The uid.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClaimUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A namespace's uid as recorded in a marker: the same rules as [`ClaimUid`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamespaceUid(String);

impl NamespaceUid {
    /// Validates a namespace uid.
    pub fn parse(uid: &str) -> Result<Self, NameError> {
        ClaimUid::parse(uid)
            .map(|u| NamespaceUid(u.0))
            .map_err(|e| NameError {
                what: "namespace uid",
                ..e
            })
    }

    /// The uid.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NamespaceUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the controller knows of a claim's namespace when it makes or adopts the claim's
/// directories.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceNow {
    /// The namespace's uid now (from the controller's watch of Namespaces); `None` when it
    /// is not known, and then no marker's namespace uid is checked or written.
    pub uid: Option<NamespaceUid>,
    /// Whether a claim directory whose marker records another uid for the namespace (one
    /// deleted and re-created under the same name) is adopted anyway, its marker then
    /// rewritten to the current uid: the class's `adoptFromRecreatedNamespace`.
    pub adopt_recreated: bool,
}

/// Who a claim directory is made for: the claim, its uid, its class's layout (which gives
/// the directory, [`Owner::rel`]) and its namespace as known now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The claim.
    pub claim: ClaimName,
    /// Its uid.
    pub uid: ClaimUid,
    /// Its class's layout.
    pub layout: Layout,
    /// Its namespace's uid, and whether an earlier namespace's directory may be adopted.
    pub namespace: NamespaceNow,
}

impl Owner {
    /// The claim's directory relative to a server's mount.
    pub fn rel(&self) -> super::place::RelDir {
        self.layout.rel_dir(&self.claim)
    }
}

/// What a marker says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Marker {
    /// A claim's directory (its volume).
    Claim {
        /// The layout it was made in.
        layout: Layout,
        /// The claim.
        claim: ClaimName,
        /// The uid of the claim it was made for (or that first adopted it, unmarked); a
        /// re-created claim keeps using it without rewriting the marker.
        uid: ClaimUid,
        /// The uid of the claim's namespace it was made (or last adopted) for; `None` in
        /// markers of older versions and ones written while the uid was not known.
        namespace_uid: Option<NamespaceUid>,
    },
    /// The directory of a namespace in the nested layout (it holds that namespace's claim
    /// directories).
    Namespace {
        /// The namespace.
        namespace: String,
        /// Its uid when the directory was made or last adopted, if known then.
        namespace_uid: Option<NamespaceUid>,
    },
}

impl Marker {
    /// The marker of `owner`'s claim directory.
    pub fn for_claim(owner: &Owner) -> Self {
        Marker::Claim {
            layout: owner.layout,
            claim: owner.claim.clone(),
            uid: owner.uid.clone(),
            namespace_uid: owner.namespace.uid.clone(),
        }
    }

    /// The marker of the nested layout's directory of `namespace`, whose uid is `uid`
    /// (`None`: not known).
    pub fn for_namespace(namespace: &str, uid: Option<&NamespaceUid>) -> Self {
        Marker::Namespace {
            namespace: namespace.to_string(),
            namespace_uid: uid.cloned(),
        }
    }

    /// The uid of the namespace the directory was made (or last adopted) for, if recorded.
    pub fn namespace_uid(&self) -> Option<&NamespaceUid> {
        match self {
            Marker::Claim { namespace_uid, .. } | Marker::Namespace { namespace_uid, .. } => {
                namespace_uid.as_ref()
            }
        }
    }

    /// The same marker recording namespace uid `uid`.
    pub fn with_namespace_uid(&self, uid: &NamespaceUid) -> Self {
        let mut marker = self.clone();
        match &mut marker {
            Marker::Claim { namespace_uid, .. } | Marker::Namespace { namespace_uid, .. } => {
                *namespace_uid = Some(uid.clone());
            }
        }
        marker
    }

    /// The marker file's text.
    pub fn render(&self) -> String {
        let mut text = format!(
            "# stowage: who this directory was made for (see SECURITY.md); do not edit or copy it\nversion={FORMAT_VERSION}\n"
        );
        match self {
            Marker::Claim {
                layout, claim, uid, ..
            } => text.push_str(&format!(
                "kind=claim\nlayout={layout}\nnamespace={}\nclaim={}\nclaim-uid={uid}\n",
                claim.namespace(),
                claim.name()
            )),
            Marker::Namespace { namespace, .. } => {
                text.push_str(&format!("kind=namespace\nnamespace={namespace}\n"));
            }
        }
        if let Some(uid) = self.namespace_uid() {
            text.push_str(&format!("namespace-uid={uid}\n"));
        }
        text
    }

    /// Parses a marker file's text; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_MARKER_LEN {
            return Err(format!("it is longer than {MAX_MARKER_LEN} bytes"));
        }
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(format!("line {}: expected key=value", n + 1));
            };
            if fields.insert(key.trim(), value.trim()).is_some() {
                return Err(format!("line {}: {} is given twice", n + 1, key.trim()));
            }
        }
        let field = |key: &str| {
            fields
                .get(key)
                .copied()
                .ok_or_else(|| format!("it has no {key}= line"))
        };
        match field("version")? {
            FORMAT_VERSION => {}
            other => {
                return Err(format!(
                    "version {other:?} is not one this stowage reads (it reads {FORMAT_VERSION}); was it written by a newer stowage?"
                ));
            }
        }
        let namespace = field("namespace")?;
        let namespace_uid = fields
            .get("namespace-uid")
            .map(|u| NamespaceUid::parse(u).map_err(|e| e.to_string()))
            .transpose()?;
        match field("kind")? {
            "claim" => {
                let layout = match field("layout")? {
                    "nested" => Layout::Nested,
                    "flat" => Layout::Flat,
                    other => return Err(format!("layout {other:?} is neither nested nor flat")),
                };
                let claim =
                    ClaimName::new(namespace, field("claim")?).map_err(|e| e.to_string())?;
                let uid = ClaimUid::parse(field("claim-uid")?).map_err(|e| e.to_string())?;
                Ok(Marker::Claim {
                    layout,
                    claim,
                    uid,
                    namespace_uid,
                })
            }
            "namespace" => {
                check_label(namespace).map_err(|why| format!("namespace {namespace:?}: {why}"))?;
                Ok(Marker::Namespace {
                    namespace: namespace.to_string(),
                    namespace_uid,
                })
            }
            other => Err(format!("kind {other:?} is neither claim nor namespace")),
        }
    }
}

/// Why a directory may not be used as asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Its marker names another claim, or the same claim in the other layout (a directory
    /// moved by hand).
    OtherClaim {
        /// The claim the marker names.
        claim: ClaimName,
        /// Its uid.
        uid: ClaimUid,
        /// Its layout.
        layout: Layout,
    },
    /// Its marker says it is the nested layout's directory of a namespace.
    NamespaceDirectory {
        /// The namespace.
        namespace: String,
    },
    /// It has no marker but holds a marked claim directory of the nested layout named as
    /// if it were that namespace's directory (`<it>/<claim>`).
    HoldsNestedClaim {
        /// The claim directory found inside, `<namespace>/<claim>`.
        inside: String,
    },
    /// Its marker is not one this version can read.
    InvalidMarker {
        /// What is wrong with it.
        why: String,
    },
    /// Its marker names the claim, but records another uid for the claim's namespace: it
    /// was made for a namespace of the same name that was deleted (the data retained) and
    /// created again, perhaps by another tenant.
    RecreatedNamespace {
        /// The namespace.
        namespace: String,
        /// The uid the marker records.
        recorded: NamespaceUid,
        /// The namespace's uid now.
        current: NamespaceUid,
    },
}

impl Refusal {
    /// A stable PascalCase reason for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::OtherClaim { .. } => "NfsDirectoryOfAnotherClaim",
            Refusal::NamespaceDirectory { .. } | Refusal::HoldsNestedClaim { .. } => {
                "NfsNamespaceDirectoryRefused"
            }
            Refusal::InvalidMarker { .. } => "NfsOwnerMarkerInvalid",
            Refusal::RecreatedNamespace { .. } => "NfsDirectoryOfDeletedNamespace",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::OtherClaim { claim, uid, layout } => write!(
                f,
                "belongs to claim {claim} (uid {uid}, {layout} layout) according to its {OWNER_FILE} marker"
            ),
            Refusal::NamespaceDirectory { namespace } => write!(
                f,
                "is the directory of namespace {namespace} in the nested layout according to its {OWNER_FILE} marker, not a claim's volume"
            ),
            Refusal::HoldsNestedClaim { inside } => write!(
                f,
                "has no {OWNER_FILE} marker but holds {inside}, a claim directory of the nested layout, so it is that namespace's directory, not a claim's volume"
            ),
            Refusal::InvalidMarker { why } => {
                write!(f, "has an {OWNER_FILE} marker stowage cannot read: {why}")
            }
            Refusal::RecreatedNamespace {
                namespace,
                recorded,
                current,
            } => write!(
                f,
                "was made for namespace {namespace} with uid {recorded} according to its {OWNER_FILE} marker, but namespace {namespace} now has uid {current}: it holds the data of a namespace of that name that was deleted"
            ),
        }
    }
}

/// What a directory was going to be used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A claim's volume (provisioning).
    Volume,
    /// The namespace directory above a nested claim's volume (provisioning).
    NamespaceOf,
    /// Removal or archiving when a PV is released.
    Release,
}

/// A directory refused to a claim, with the fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path} {refusal}; {}", self.consequence())]
pub struct NotOurs {
    /// The directory.
    pub path: PathBuf,
    /// The claim that wanted it, `<namespace>/<name>` (`an unknown claim` for a PV that
    /// names none).
    pub claim: String,
    /// What for.
    pub purpose: Purpose,
    /// Why not.
    pub refusal: Refusal,
}

impl NotOurs {
    /// A stable PascalCase reason for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        self.refusal.reason()
    }

    fn consequence(&self) -> String {
        let claim = &self.claim;
        let fix = match &self.refusal {
            Refusal::InvalidMarker { .. } => format!(
                "check who wrote the marker, then correct it (the format is in SECURITY.md) or, only if the directory really is claim {claim}'s, remove it"
            ),
            Refusal::RecreatedNamespace { current, .. } => format!(
                "if the new namespace is meant to have that data, provision claim {claim} with a StorageClass that sets {PARAM_ADOPT_FROM_RECREATED_NAMESPACE}: \"true\" (the marker then records uid {current}); otherwise give the claim another name, or move the directory aside by hand"
            ),
            _ => format!(
                "the flat layout's <namespace>-<claim> names collide with it: give claim {claim} another name, or use one layout for every class on these NFS servers (mixing them needs --nfs-allow-mixed-layouts and namespace names that cannot collide); if the directory is stale, move it aside by hand"
            ),
        };
        match self.purpose {
            Purpose::Volume => {
                format!("refusing it as the volume of claim {claim}; nothing was changed; {fix}")
            }
            Purpose::NamespaceOf => format!(
                "refusing it as the namespace directory of claim {claim}; nothing was changed; {fix}"
            ),
            Purpose::Release => format!(
                "refusing to delete or archive it for the released volume of claim {claim}; it is left as it is for a person to look at (remove it by hand once you know whose data it holds)"
            ),
        }
    }
}

/// PURE: whether a claim directory whose marker is `marker` may be used for `claim` in
/// `layout` (`claim` is `None` for a released PV that names no claim: then only a
/// namespace directory is refused).
pub fn check_claim_dir(
    marker: &Marker,
    claim: Option<&ClaimName>,
    layout: Layout,
) -> Result<(), Refusal> {
    match marker {
        Marker::Namespace { namespace, .. } => Err(Refusal::NamespaceDirectory {
            namespace: namespace.clone(),
        }),
        Marker::Claim {
            layout: l,
            claim: c,
            uid,
            ..
        } => match claim {
            Some(want) if want != c || layout != *l => Err(Refusal::OtherClaim {
                claim: c.clone(),
                uid: uid.clone(),
                layout: *l,
            }),
            _ => Ok(()),
        },
    }
}

/// PURE: whether a directory whose marker is `marker` may be the nested layout's directory
/// of `namespace`.
pub fn check_namespace_dir(marker: &Marker, namespace: &str) -> Result<(), Refusal> {
    match marker {
        Marker::Namespace { namespace: n, .. } if n == namespace => Ok(()),
        Marker::Namespace { namespace: n, .. } => Err(Refusal::NamespaceDirectory {
            namespace: n.clone(),
        }),
        Marker::Claim {
            layout, claim, uid, ..
        } => Err(Refusal::OtherClaim {
            claim: claim.clone(),
            uid: uid.clone(),
            layout: *layout,
        }),
    }
}

/// What is to become of the marker of a directory that may be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Adopt {
    /// It stays as it is.
    AsIs,
    /// It is to be replaced by this one: the same, recording the namespace's current uid
    /// (it recorded none, or an earlier namespace's that may be let go).
    Rewrite(Marker),
}

/// PURE: whether a directory whose `marker` already passed [`check_claim_dir`] or
/// [`check_namespace_dir`] may be used by a claim of a namespace known as `now`, as far as
/// the namespace's uid goes:
///
/// - the uid is not known now, or the marker records the same: as it is;
/// - the marker records none (an older version's, or written while it was not known): the
///   marker is rewritten to record it;
/// - the marker records another (the namespace was deleted and re-created): a claim
///   directory is refused ([`Refusal::RecreatedNamespace`]) unless `now.adopt_recreated`,
///   then the marker is rewritten; a namespace directory is rewritten (it holds only claim
///   directories, each judged by its own marker).
pub fn check_namespace_uid(marker: &Marker, now: &NamespaceNow) -> Result<Adopt, Refusal> {
    let Some(current) = &now.uid else {
        return Ok(Adopt::AsIs);
    };
    match (marker, marker.namespace_uid()) {
        (_, Some(recorded)) if recorded == current => Ok(Adopt::AsIs),
        (Marker::Claim { claim, .. }, Some(recorded)) if !now.adopt_recreated => {
            Err(Refusal::RecreatedNamespace {
                namespace: claim.namespace().to_string(),
                recorded: recorded.clone(),
                current: current.clone(),
            })
        }
        _ => Ok(Adopt::Rewrite(marker.with_namespace_uid(current))),
    }
}

/// PURE: whether `marker`, found in the subdirectory `name` of the unmarked top-level
/// directory `top`, shows that `top` is a namespace directory of the nested layout: it
/// marks the nested claim `<top>/<name>`.
pub fn marks_nested_claim(marker: &Marker, top: &str, name: &str) -> bool {
    matches!(marker, Marker::Claim { layout: Layout::Nested, claim, .. }
        if claim.namespace() == top && claim.name() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(ns: &str, name: &str) -> ClaimName {
        ClaimName::new(ns, name).unwrap()
    }

    fn uid(s: &str) -> ClaimUid {
        ClaimUid::parse(s).unwrap()
    }

    fn claim_marker(ns: &str, name: &str, layout: Layout) -> Marker {
        Marker::for_claim(&Owner {
            claim: claim(ns, name),
            uid: uid("6f0c2d1e-0000-4000-8000-000000000001"),
            layout,
            namespace: NamespaceNow::default(),
        })
    }

    fn ns_uid(s: &str) -> NamespaceUid {
        NamespaceUid::parse(s).unwrap()
    }

    /// The namespace as known now: uid `uid` (if any), adopting an earlier namespace's
    /// directories if `adopt`.
    fn now(uid: Option<&str>, adopt: bool) -> NamespaceNow {
        NamespaceNow {
            uid: uid.map(ns_uid),
            adopt_recreated: adopt,
        }
    }

    #[test]
    fn markers_round_trip_in_the_documented_format() {
        let m = claim_marker("team", "db", Layout::Flat);
        let text = m.render();
        assert!(
            text.contains(
                "version=1\nkind=claim\nlayout=flat\nnamespace=team\nclaim=db\nclaim-uid=6f0c2d1e-0000-4000-8000-000000000001\n"
            ),
            "{text}"
        );
        assert_eq!(Marker::parse(&text).unwrap(), m);
        let ns = Marker::for_namespace("team-db", None);
        assert_eq!(
            ns.render().lines().skip(1).collect::<Vec<_>>(),
            ["version=1", "kind=namespace", "namespace=team-db"]
        );
        assert_eq!(Marker::parse(&ns.render()).unwrap(), ns);
        // Order, blanks, comments, spaces around '=' and unknown keys do not matter.
        assert_eq!(
            Marker::parse(
                "\n# x\nnamespace = team-db\nfuture-key=1\n\nkind=namespace\nversion=1\n"
            )
            .unwrap(),
            ns
        );
    }

    #[test]
    fn the_namespace_uid_is_an_optional_key_of_both_kinds() {
        let owner = Owner {
            claim: claim("team", "db"),
            uid: uid("6f0c2d1e-0000-4000-8000-000000000001"),
            layout: Layout::Nested,
            namespace: now(Some("9a1b0000-0000-4000-8000-00000000000a"), false),
        };
        let m = Marker::for_claim(&owner);
        let text = m.render();
        assert!(
            text.ends_with(
                "claim-uid=6f0c2d1e-0000-4000-8000-000000000001\nnamespace-uid=9a1b0000-0000-4000-8000-00000000000a\n"
            ),
            "{text}"
        );
        assert!(text.contains("version=1\n"), "still version 1: {text}");
        assert_eq!(Marker::parse(&text).unwrap(), m);
        assert_eq!(
            m.namespace_uid(),
            Some(&ns_uid("9a1b0000-0000-4000-8000-00000000000a"))
        );
        let ns = Marker::for_namespace("team", owner.namespace.uid.as_ref());
        assert_eq!(
            ns.render().lines().skip(1).collect::<Vec<_>>(),
            [
                "version=1",
                "kind=namespace",
                "namespace=team",
                "namespace-uid=9a1b0000-0000-4000-8000-00000000000a"
            ]
        );
        assert_eq!(Marker::parse(&ns.render()).unwrap(), ns);
        // Without it (older versions, or the uid not known): none recorded, none rendered.
        let old = claim_marker("team", "db", Layout::Nested);
        assert_eq!(old.namespace_uid(), None);
        assert!(!old.render().contains("namespace-uid"));
        assert_eq!(
            old.with_namespace_uid(&ns_uid("9a1b0000-0000-4000-8000-00000000000a")),
            m
        );
        // A uid that could break the line format is refused.
        for bad in ["namespace-uid=a b", "namespace-uid=", "namespace-uid=a/b"] {
            let e = Marker::parse(&format!("version=1\nkind=namespace\nnamespace=a\n{bad}\n"))
                .unwrap_err();
            assert!(e.contains("namespace uid"), "{bad}: {e}");
        }
    }

    #[test]
    fn markers_that_are_not_what_stowage_writes_are_refused_with_why() {
        for (text, want) in [
            ("version=2\nkind=namespace\nnamespace=a\n", "newer stowage"),
            ("kind=namespace\nnamespace=a\n", "no version= line"),
            ("version=1\nkind=volume\nnamespace=a\n", "kind \"volume\""),
            (
                "version=1\nkind=namespace\nnamespace=A\n",
                "namespace \"A\"",
            ),
            (
                "version=1\nkind=namespace\nnamespace=a\nnamespace=b\n",
                "twice",
            ),
            ("version=1\nkind namespace\n", "expected key=value"),
            (
                "version=1\nkind=claim\nnamespace=a\nclaim=b\n",
                "no layout= line",
            ),
            (
                "version=1\nkind=claim\nlayout=deep\nnamespace=a\nclaim=b\nclaim-uid=u\n",
                "neither nested nor flat",
            ),
            (
                "version=1\nkind=claim\nlayout=flat\nnamespace=a\nclaim=../b\nclaim-uid=u\n",
                "claim name",
            ),
            (
                "version=1\nkind=claim\nlayout=flat\nnamespace=a\nclaim=b\nclaim-uid=u u\n",
                "claim uid",
            ),
        ] {
            let e = Marker::parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        assert!(
            Marker::parse(&"#".repeat(MAX_MARKER_LEN + 1))
                .unwrap_err()
                .contains("longer")
        );
    }

    #[test]
    fn a_claim_directory_is_its_claims_in_its_layout_whatever_the_uid() {
        let flat = claim_marker("team", "db", Layout::Flat);
        let me = claim("team", "db");
        // Same claim, or re-created with a new uid: the marker does not hold the uid against it.
        assert_eq!(check_claim_dir(&flat, Some(&me), Layout::Flat), Ok(()));
        // Another claim whose flat name collides: a-b/c and a/b-c.
        let e = check_claim_dir(
            &claim_marker("a-b", "c", Layout::Flat),
            Some(&claim("a", "b-c")),
            Layout::Flat,
        )
        .unwrap_err();
        assert_eq!(e.reason(), "NfsDirectoryOfAnotherClaim");
        assert!(e.to_string().contains("claim a-b/c (uid 6f0c"), "{e}");
        // The same names in the other layout: a directory moved by hand.
        assert!(check_claim_dir(&flat, Some(&me), Layout::Nested).is_err());
        // A namespace directory is nobody's volume.
        let ns = Marker::for_namespace("team-db", None);
        let e = check_claim_dir(&ns, Some(&claim("team", "db")), Layout::Flat).unwrap_err();
        assert_eq!(e.reason(), "NfsNamespaceDirectoryRefused");
        assert!(check_claim_dir(&ns, None, Layout::Flat).is_err());
        // A released PV naming no claim may remove a claim directory, never a namespace's.
        assert_eq!(check_claim_dir(&flat, None, Layout::Flat), Ok(()));
    }

    #[test]
    fn a_claim_directory_of_a_deleted_namespace_is_refused_unless_the_class_adopts_it() {
        let (old, new) = (
            "9a1b0000-0000-4000-8000-00000000000a",
            "9a1b0000-0000-4000-8000-00000000000b",
        );
        let marked = claim_marker("team", "db", Layout::Nested).with_namespace_uid(&ns_uid(old));
        // The same namespace: as it is.
        assert_eq!(
            check_namespace_uid(&marked, &now(Some(old), false)),
            Ok(Adopt::AsIs)
        );
        // Deleted and re-created: refused, naming both uids.
        let e = check_namespace_uid(&marked, &now(Some(new), false)).unwrap_err();
        assert_eq!(e.reason(), "NfsDirectoryOfDeletedNamespace");
        assert_eq!(
            e,
            Refusal::RecreatedNamespace {
                namespace: "team".into(),
                recorded: ns_uid(old),
                current: ns_uid(new),
            }
        );
        let text = e.to_string();
        assert!(
            text.contains(&format!("namespace team with uid {old}"))
                && text.contains(&format!("now has uid {new}")),
            "{text}"
        );
        // The class adopts it: the marker is rewritten to the new uid, the rest kept.
        assert_eq!(
            check_namespace_uid(&marked, &now(Some(new), true)),
            Ok(Adopt::Rewrite(marked.with_namespace_uid(&ns_uid(new))))
        );
        // No uid recorded (an older version's marker): adopted, and the uid added.
        let unrecorded = claim_marker("team", "db", Layout::Nested);
        assert_eq!(
            check_namespace_uid(&unrecorded, &now(Some(new), false)),
            Ok(Adopt::Rewrite(marked.with_namespace_uid(&ns_uid(new))))
        );
        // The namespace's uid not known (the watch behind): as it is, whatever is recorded.
        for m in [&marked, &unrecorded] {
            assert_eq!(check_namespace_uid(m, &now(None, false)), Ok(Adopt::AsIs));
        }
        // A namespace directory recording another uid is rewritten, never refused: it holds
        // only claim directories, each judged by its own marker.
        let ns = Marker::for_namespace("team", Some(&ns_uid(old)));
        assert_eq!(
            check_namespace_uid(&ns, &now(Some(new), false)),
            Ok(Adopt::Rewrite(Marker::for_namespace(
                "team",
                Some(&ns_uid(new))
            )))
        );
    }

    #[test]
    fn a_namespace_directory_is_only_its_namespaces() {
        assert_eq!(
            check_namespace_dir(&Marker::for_namespace("team-db", None), "team-db"),
            Ok(())
        );
        assert!(check_namespace_dir(&Marker::for_namespace("other", None), "team-db").is_err());
        let flat_volume = claim_marker("team", "db", Layout::Flat);
        let e = check_namespace_dir(&flat_volume, "team-db").unwrap_err();
        assert!(e.to_string().contains("belongs to claim team/db"), "{e}");
    }

    #[test]
    fn only_a_nested_claim_named_for_its_place_shows_a_namespace_directory() {
        let nested = claim_marker("team-db", "x", Layout::Nested);
        assert!(marks_nested_claim(&nested, "team-db", "x"));
        assert!(
            !marks_nested_claim(&nested, "team-db", "y"),
            "moved or copied"
        );
        assert!(!marks_nested_claim(&nested, "team", "x"));
        let flat = claim_marker("team-db", "x", Layout::Flat);
        assert!(!marks_nested_claim(&flat, "team-db", "x"));
        assert!(!marks_nested_claim(
            &Marker::for_namespace("team-db", None),
            "team-db",
            "x"
        ));
    }

    #[test]
    fn a_refusal_for_a_deleted_namespace_names_both_uids_and_the_class_parameter() {
        let e = NotOurs {
            path: "/m/team/db".into(),
            claim: "team/db".into(),
            purpose: Purpose::Volume,
            refusal: Refusal::RecreatedNamespace {
                namespace: "team".into(),
                recorded: ns_uid("old-uid"),
                current: ns_uid("new-uid"),
            },
        };
        let text = e.to_string();
        for part in [
            "/m/team/db was made for namespace team with uid old-uid",
            "namespace team now has uid new-uid",
            "refusing it as the volume of claim team/db; nothing was changed",
            "adoptFromRecreatedNamespace: \"true\"",
            "move the directory aside",
        ] {
            assert!(text.contains(part), "{part}: {text}");
        }
        assert!(!text.contains("--nfs-allow-mixed-layouts"), "{text}");
    }

    #[test]
    fn refusals_name_the_directory_the_claim_and_the_fix() {
        let e = NotOurs {
            path: "/m/team-db".into(),
            claim: "team/db".into(),
            purpose: Purpose::Volume,
            refusal: Refusal::HoldsNestedClaim {
                inside: "team-db/x".into(),
            },
        };
        let text = e.to_string();
        for part in [
            "/m/team-db has no .stowage-owner marker but holds team-db/x",
            "refusing it as the volume of claim team/db",
            "give claim team/db another name",
            "--nfs-allow-mixed-layouts",
        ] {
            assert!(text.contains(part), "{part}: {text}");
        }
        let released = NotOurs {
            purpose: Purpose::Release,
            ..e
        };
        assert!(released.to_string().contains("left as it is"), "{released}");
    }
}
