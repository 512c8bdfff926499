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
//! ```
//!
//! What may use a directory (PURE decisions here; the reading and writing, relative to the
//! directory's descriptor and never through a symlink, is in [`super::dirs`]):
//!
//! ```text
//!   claim marker, same namespace, name and layout ──▶ the claim's (any uid: a re-created
//!                                                     claim finds its data)
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
//! Not recorded: the namespace's uid. The controller watches no Namespaces and its RBAC
//! cannot read them, so a namespace deleted and re-created under the same name (perhaps by
//! another tenant) is not told apart from the old one: a claim of the same name there
//! finds the old claim's data, as before markers.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

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

/// Who a claim directory is made for: the claim, its uid, and its class's layout (which
/// gives the directory, [`Owner::rel`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The claim.
    pub claim: ClaimName,
    /// Its uid.
    pub uid: ClaimUid,
    /// Its class's layout.
    pub layout: Layout,
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
    },
    /// The directory of a namespace in the nested layout (it holds that namespace's claim
    /// directories).
    Namespace {
        /// The namespace.
        namespace: String,
    },
}

impl Marker {
    /// The marker of `owner`'s claim directory.
    pub fn for_claim(owner: &Owner) -> Self {
        Marker::Claim {
            layout: owner.layout,
            claim: owner.claim.clone(),
            uid: owner.uid.clone(),
        }
    }

    /// The marker of the nested layout's directory of `namespace`.
    pub fn for_namespace(namespace: &str) -> Self {
        Marker::Namespace {
            namespace: namespace.to_string(),
        }
    }

    /// The marker file's text.
    pub fn render(&self) -> String {
        let mut text = format!(
            "# stowage: who this directory was made for (see SECURITY.md); do not edit or copy it\nversion={FORMAT_VERSION}\n"
        );
        match self {
            Marker::Claim { layout, claim, uid } => text.push_str(&format!(
                "kind=claim\nlayout={layout}\nnamespace={}\nclaim={}\nclaim-uid={uid}\n",
                claim.namespace(),
                claim.name()
            )),
            Marker::Namespace { namespace } => {
                text.push_str(&format!("kind=namespace\nnamespace={namespace}\n"));
            }
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
                Ok(Marker::Claim { layout, claim, uid })
            }
            "namespace" => {
                check_label(namespace).map_err(|why| format!("namespace {namespace:?}: {why}"))?;
                Ok(Marker::Namespace {
                    namespace: namespace.to_string(),
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
        Marker::Namespace { namespace } => Err(Refusal::NamespaceDirectory {
            namespace: namespace.clone(),
        }),
        Marker::Claim {
            layout: l,
            claim: c,
            uid,
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
        Marker::Namespace { namespace: n } if n == namespace => Ok(()),
        Marker::Namespace { namespace: n } => Err(Refusal::NamespaceDirectory {
            namespace: n.clone(),
        }),
        Marker::Claim { layout, claim, uid } => Err(Refusal::OtherClaim {
            claim: claim.clone(),
            uid: uid.clone(),
            layout: *layout,
        }),
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
        })
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
        let ns = Marker::for_namespace("team-db");
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
        let ns = Marker::for_namespace("team-db");
        let e = check_claim_dir(&ns, Some(&claim("team", "db")), Layout::Flat).unwrap_err();
        assert_eq!(e.reason(), "NfsNamespaceDirectoryRefused");
        assert!(check_claim_dir(&ns, None, Layout::Flat).is_err());
        // A released PV naming no claim may remove a claim directory, never a namespace's.
        assert_eq!(check_claim_dir(&flat, None, Layout::Flat), Ok(()));
    }

    #[test]
    fn a_namespace_directory_is_only_its_namespaces() {
        assert_eq!(
            check_namespace_dir(&Marker::for_namespace("team-db"), "team-db"),
            Ok(())
        );
        assert!(check_namespace_dir(&Marker::for_namespace("other"), "team-db").is_err());
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
            &Marker::for_namespace("team-db"),
            "team-db",
            "x"
        ));
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
