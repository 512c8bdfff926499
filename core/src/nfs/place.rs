//! Where a claim's directory goes: the key, the directory layout, reuse of existing data, and
//! the way back from a PV to its server and directory.
//!
//! ```text
//!   claim ns/data ──▶ ClaimName (both parts DNS-1123: no "/", no "..", never empty)
//!        │
//!        ├─ layout nested (default): <mount>/ns/data        PV path <export>/ns/data
//!        └─ layout flat (takeover):  <mount>/ns-data        PV path <export>/ns-data
//!        │
//!        ├─ some server holds that directory, and it is not the claim's (its marker names
//!        │      another claim or a namespace, see super::owner) ──▶ refused
//!        ├─ some server already holds that directory? ──▶ that server (data survives
//!        │      re-creation of the claim, even after servers were added)
//!        ├─ otherwise the ring (weighted, bounded loads) picks a server for key "ns/data"
//!        └─ the chosen directory is, holds or lies inside another PV's (clash) ──▶ refused
//! ```
//!
//! The flat layout is the source design's. It is ambiguous: `a-b`/`c` and `a`/`b-c` both map
//! to `a-b-c`, so two tenants' claims would share one directory (reuse-if-present makes that
//! silent). Worse, `team`/`db` flat and namespace `team-db` nested share `team-db`: the flat
//! claim would get the whole namespace's directory. Select it (`layout: flat`) only for a
//! class that takes over data the source design wrote, in namespaces whose names cannot
//! collide that way. Ownership markers ([`super::owner`]) make every such collision a
//! refusal naming both sides, and the controller refuses flat and nested classes side by
//! side unless told they cannot collide (`--nfs-allow-mixed-layouts`).

use std::fmt;
use std::path::{Path, PathBuf};

use super::config::{ServerName, ServerSpec};
use super::dirs::{DirError, ServerRoot};
use super::owner::{NotOurs, Owner};
use super::ring::{Epsilon, NoServer, Ring, ServerLoad, Skip};
use crate::ledger::Bytes;

/// A claim's namespace and name, both validated, so no directory built from them can leave
/// the server's mount.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClaimName {
    namespace: String,
    name: String,
}

/// A name that cannot be used in a path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what} {given:?} is not valid: {why}")]
pub struct NameError {
    /// What the string was meant to be.
    pub what: &'static str,
    /// The refused string.
    pub given: String,
    /// What is wrong with it and what is allowed.
    pub why: String,
}

impl ClaimName {
    /// Validates a claim's namespace (a DNS-1123 label) and name (a DNS-1123 subdomain),
    /// which is what the API server allows; anything else (`..`, `/`, empty, upper case)
    /// is refused.
    pub fn new(namespace: &str, name: &str) -> Result<Self, NameError> {
        check_label(namespace).map_err(|why| NameError {
            what: "namespace",
            given: namespace.to_string(),
            why,
        })?;
        check_subdomain(name, 253).map_err(|why| NameError {
            what: "claim name",
            given: name.to_string(),
            why,
        })?;
        Ok(ClaimName {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The claim's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The ring key, `<namespace>/<name>`: unambiguous, because neither part holds `/`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl fmt::Display for ClaimName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A DNS-1123 label: 1–63 of `a-z`, `0-9`, `-`, starting and ending alphanumeric.
pub(crate) fn check_label(s: &str) -> Result<(), String> {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if s.is_empty() || s.len() > 63 {
        return Err("it must be 1-63 characters long".to_string());
    }
    if !s.chars().all(|c| alnum(c) || c == '-') {
        return Err("it may hold only lowercase letters, digits and '-'".to_string());
    }
    if !s.starts_with(alnum) || !s.ends_with(alnum) {
        return Err("it must start and end with a lowercase letter or digit".to_string());
    }
    Ok(())
}

/// A DNS-1123 subdomain of at most `max` bytes: dot-separated labels of `a-z`, `0-9`, `-`.
fn check_subdomain(s: &str, max: usize) -> Result<(), String> {
    if s.is_empty() || s.len() > max {
        return Err(format!("it must be 1-{max} characters long"));
    }
    if s.contains('/') {
        return Err("it contains a path separator".to_string());
    }
    for part in s.split('.') {
        let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        if part.is_empty() || !part.starts_with(alnum) || !part.ends_with(alnum) {
            return Err(
                "each dot-separated part must start and end with a lowercase letter or digit (so no \"..\")"
                    .to_string(),
            );
        }
        if !part.chars().all(|c| alnum(c) || c == '-') {
            return Err("it may hold only lowercase letters, digits, '-' and '.'".to_string());
        }
    }
    Ok(())
}

/// How a claim's directory is laid out under a server's mount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Layout {
    /// `<namespace>/<claim>`: unambiguous (the default).
    #[default]
    Nested,
    /// `<namespace>-<claim>`: the source design's, only for taking over its data (see the
    /// module docs for the collision it has).
    Flat,
}

impl Layout {
    /// The claim's directory relative to a server's mount (and export).
    pub fn rel_dir(self, claim: &ClaimName) -> RelDir {
        match self {
            Layout::Nested => RelDir(vec![claim.namespace.clone(), claim.name.clone()]),
            Layout::Flat => RelDir(vec![format!("{}-{}", claim.namespace, claim.name)]),
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Nested => "nested",
            Layout::Flat => "flat",
        })
    }
}

/// A claim directory relative to a server's mount: one (flat) or two (nested) components,
/// each lowercase letters, digits, `-` and `.` with no empty dot-part, so never `.`, `..`,
/// or anything holding `/`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelDir(Vec<String>);

impl RelDir {
    /// Parses a relative path as found in a PV (`ns/claim` or `ns-claim`), refusing
    /// anything that is not a directory stowage could have made.
    pub fn parse(rel: &str) -> Result<Self, NameError> {
        let err = |why: String| NameError {
            what: "volume directory",
            given: rel.to_string(),
            why,
        };
        let parts: Vec<&str> = rel.split('/').collect();
        match parts.as_slice() {
            [flat] => {
                check_subdomain(flat, 63 + 1 + 253).map_err(err)?;
                Ok(RelDir(vec![flat.to_string()]))
            }
            [ns, name] => {
                check_label(ns).map_err(|why| err(format!("namespace part: {why}")))?;
                check_subdomain(name, 253).map_err(|why| err(format!("claim part: {why}")))?;
                Ok(RelDir(vec![ns.to_string(), name.to_string()]))
            }
            _ => Err(err(
                "expected <namespace>/<claim> or <namespace>-<claim>".to_string()
            )),
        }
    }

    /// The components, outermost first.
    pub fn parts(&self) -> &[String] {
        &self.0
    }

    /// The relative path.
    pub fn to_path(&self) -> PathBuf {
        self.0.iter().collect()
    }

    /// The layout that makes a directory of this shape: one component is flat, two nested.
    pub fn layout(&self) -> Layout {
        if self.0.len() == 1 {
            Layout::Flat
        } else {
            Layout::Nested
        }
    }

    /// The components joined with `-`: the readable part of an archive name.
    pub fn label(&self) -> String {
        self.0.join("-")
    }
}

impl fmt::Display for RelDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("/"))
    }
}

/// `<export>/<rel>`: the PV's `spec.nfs.path`.
pub fn export_path(export: &str, rel: &RelDir) -> String {
    if export == "/" {
        format!("/{rel}")
    } else {
        format!("{export}/{rel}")
    }
}

/// Which servers already hold a claim's directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lookup {
    /// Servers (indices) on which the directory exists.
    pub holders: Vec<usize>,
    /// Servers that could not be looked at, with why. The claim's data might be on one of
    /// them; placement goes on without them (an outage must not stop all provisioning),
    /// and the reason is reported with the placement.
    pub unchecked: Vec<(usize, String)>,
    /// Servers on which the directory exists but is not the claim's (its ownership marker
    /// names another claim or a namespace, see [`super::owner`]). Any of these refuses the
    /// claim: its name collides with someone else's directory.
    pub refused: Vec<(usize, NotOurs)>,
}

/// Looks for the directory of `owner`'s claim under every server's mount (real directories
/// only, no symlinks followed), and checks that a directory found is the claim's
/// ([`ServerRoot::holds`]). I/O; may block on a hung NFS mount, so the controller calls it
/// off the async runtime (e.g. `spawn_blocking`) with a time limit.
pub fn lookup(servers: &[ServerSpec], owner: &Owner) -> Lookup {
    let mut found = Lookup::default();
    for (idx, s) in servers.iter().enumerate() {
        let held = ServerRoot::open(&s.mount).and_then(|root| root.holds(owner));
        match held {
            Ok(true) => found.holders.push(idx),
            Ok(false) => {}
            Err(DirError::NotOurs(refused)) => found.refused.push((idx, *refused)),
            Err(e) => found.unchecked.push((idx, e.to_string())),
        }
    }
    found
}

/// Where an NFS claim goes: the server and the directory on it (named apart from the
/// ledger's [`crate::ledger::Placement`], the spread/binpack policy of local classes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerDir {
    /// The server's index in the config (and ring).
    pub server: usize,
    /// The server's name.
    pub server_name: ServerName,
    /// What the PV mounts: `spec.nfs.server`.
    pub address: String,
    /// The claim's directory relative to the mount and export.
    pub rel: RelDir,
    /// The directory as the controller sees it: `<mount>/<rel>`.
    pub dir: PathBuf,
    /// The PV's `spec.nfs.path`: `<export>/<rel>`.
    pub export_path: String,
    /// The directory already existed there (a re-created claim finding its data).
    pub reused: bool,
    /// Servers the ring walk passed by, with why (empty when reused).
    pub skipped: Vec<(ServerName, Skip)>,
    /// Servers that could not be checked for existing data, with why.
    pub unchecked: Vec<(ServerName, String)>,
}

/// Why a claim could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    /// The claim's directory exists on more than one server.
    #[error(
        "the directory {rel} of claim {claim} exists on several NFS servers ({}); remove or rename all but the one holding the claim's data, then the claim provisions",
        .servers.join(", ")
    )]
    Ambiguous {
        /// The claim.
        claim: String,
        /// The directory.
        rel: RelDir,
        /// The servers holding it.
        servers: Vec<String>,
    },
    /// The claim's directory exists on a server but belongs to another claim or is a
    /// namespace's directory.
    #[error("NFS server {server}: {refused}")]
    NotOurs {
        /// The server.
        server: String,
        /// The directory and why it is not the claim's.
        refused: Box<NotOurs>,
    },
    /// The claim's directory would be, hold or lie inside another PV's directory.
    #[error(transparent)]
    Overlaps(Box<Overlapping>),
    /// Every server was skipped.
    #[error(transparent)]
    NoServer(#[from] NoServer),
    /// The ring was not built from these servers.
    #[error(
        "the NFS ring was built from {ring} servers but the config has {config}; rebuild the ring after a config change"
    )]
    RingOutOfDate {
        /// Servers in the ring.
        ring: usize,
        /// Servers in the config.
        config: usize,
    },
}

impl PlaceError {
    /// A stable PascalCase reason for Events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            PlaceError::Ambiguous { .. } => "NfsDataOnSeveralServers",
            PlaceError::NotOurs { refused, .. } => refused.reason(),
            PlaceError::Overlaps(_) => "NfsDirectoryOfAnotherVolume",
            PlaceError::NoServer(_) => "NfsNoServerFits",
            PlaceError::RingOutOfDate { .. } => "NfsRingOutOfDate",
        }
    }
}

/// A claim's directory that would be, hold or lie inside another PV's ([`clash`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "the directory {address}:{path} of claim {claim} on NFS server {server} {} the directory {} of PersistentVolume {} (claim {}); refusing it so that neither volume reaches the other's data; nothing was changed; the flat layout's <namespace>-<claim> names collide here: give claim {claim} another name, or use one layout for every class on these NFS servers (mixing them needs --nfs-allow-mixed-layouts and namespace names that cannot collide)",
    match .how { Overlap::Same => "is", Overlap::Inside => "lies inside", _ => "holds" },
    .other.path,
    .other.pv,
    .other.claim.as_deref().unwrap_or("none")
)]
pub struct Overlapping {
    /// The claim.
    pub claim: String,
    /// The server.
    pub server: String,
    /// Its address.
    pub address: String,
    /// The claim's export path.
    pub path: String,
    /// The other PV's directory.
    pub other: UsedDir,
    /// How the two lie.
    pub how: Overlap,
}

/// What a placement decision needs.
#[derive(Clone, Copy, Debug)]
pub struct PlaceRequest<'a> {
    /// The claim.
    pub claim: &'a ClaimName,
    /// Its requested size.
    pub size: Bytes,
    /// The class's layout.
    pub layout: Layout,
    /// Bounded loads' ε; `None` turns them off.
    pub epsilon: Option<Epsilon>,
}

/// PURE: decides where a claim goes, given the servers, a ring built from them (same order),
/// their loads (same order) and which servers already hold the claim's directory.
///
/// An existing directory wins on any server, even a draining or full one: the claim's data
/// is there, and drain only stops *new* volumes. A directory of the claim's name that is
/// not the claim's (`found.refused`) refuses the claim, wherever else it could go.
pub fn plan(
    servers: &[ServerSpec],
    ring: &Ring,
    loads: &[ServerLoad],
    req: PlaceRequest<'_>,
    found: &Lookup,
) -> Result<ServerDir, PlaceError> {
    if ring.servers().len() != servers.len() {
        return Err(PlaceError::RingOutOfDate {
            ring: ring.servers().len(),
            config: servers.len(),
        });
    }
    let rel = req.layout.rel_dir(req.claim);
    let name_of = |idx: usize| servers[idx].name.clone();
    if let Some((idx, refused)) = found.refused.iter().find(|(idx, _)| *idx < servers.len()) {
        return Err(PlaceError::NotOurs {
            server: name_of(*idx).to_string(),
            refused: Box::new(refused.clone()),
        });
    }
    let unchecked: Vec<(ServerName, String)> = found
        .unchecked
        .iter()
        .filter(|(idx, _)| *idx < servers.len())
        .map(|(idx, why)| (name_of(*idx), why.clone()))
        .collect();
    let holders: Vec<usize> = found
        .holders
        .iter()
        .copied()
        .filter(|idx| *idx < servers.len())
        .collect();
    let (server, reused, skipped) = match holders.as_slice() {
        [] => {
            let choice = ring.place(&req.claim.key(), req.size, loads, req.epsilon)?;
            let skipped = choice
                .skipped
                .into_iter()
                .map(|(idx, skip)| (name_of(idx), skip))
                .collect();
            (choice.server, false, skipped)
        }
        [one] => (*one, true, Vec::new()),
        many => {
            return Err(PlaceError::Ambiguous {
                claim: req.claim.to_string(),
                rel,
                servers: many.iter().map(|i| servers[*i].name.to_string()).collect(),
            });
        }
    };
    let spec = &servers[server];
    Ok(ServerDir {
        server,
        server_name: spec.name.clone(),
        address: spec.address.clone(),
        dir: spec.mount.join(rel.to_path()),
        export_path: export_path(&spec.export, &rel),
        rel,
        reused,
        skipped,
        unchecked,
    })
}

/// How two export paths of one server lie, compared component by component (`/x/team` and
/// `/x/team-db` are apart; empty components, as of `//` or a trailing `/`, do not count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overlap {
    /// The same directory.
    Same,
    /// The first lies inside the second.
    Inside,
    /// The first holds the second.
    Holds,
    /// Neither holds the other.
    Apart,
}

/// PURE: how export path `a` lies relative to export path `b`.
pub fn overlap(a: &str, b: &str) -> Overlap {
    let a: Vec<&str> = a.split('/').filter(|c| !c.is_empty()).collect();
    let b: Vec<&str> = b.split('/').filter(|c| !c.is_empty()).collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    match (common == a.len(), common == b.len()) {
        (true, true) => Overlap::Same,
        (false, true) => Overlap::Inside,
        (true, false) => Overlap::Holds,
        (false, false) => Overlap::Apart,
    }
}

/// A directory a PV of the provisioner already uses, as the controller knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsedDir {
    /// The PV's name.
    pub pv: String,
    /// Its claim (`claimRef`), `<namespace>/<name>`, if it names one.
    pub claim: Option<String>,
    /// `nfs.server`.
    pub address: String,
    /// `nfs.path`.
    pub path: String,
}

/// PURE: a directory in `used` that `placement`'s directory for `claim` must not be: one of
/// the same server that holds it or lies inside it (a flat `<namespace>-<claim>` that is a
/// nested namespace's directory), or the same directory used for another claim (the flat
/// `a-b`/`c` and `a`/`b-c`). The same directory of a claim of the same namespace and name
/// is a re-created claim's data and passes.
///
/// This does not depend on ownership markers, which sit in tenants' volumes and which
/// directories made by older versions lack; it sees only PVs that still exist.
pub fn clash<'a>(
    placement: &ServerDir,
    claim: &ClaimName,
    used: &'a [UsedDir],
) -> Option<(&'a UsedDir, Overlap)> {
    let me = claim.to_string();
    used.iter()
        .filter(|u| u.address == placement.address)
        .map(|u| (u, overlap(&placement.export_path, &u.path)))
        .find(|(u, how)| match how {
            Overlap::Same => u.claim.as_deref() != Some(me.as_str()),
            Overlap::Inside | Overlap::Holds => true,
            Overlap::Apart => false,
        })
}

/// A PV's volume found again: its server and directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    /// The server's index in the config.
    pub server: usize,
    /// The directory relative to the server's mount.
    pub rel: RelDir,
}

/// Why a PV's `nfs` source does not lead to a configured server's directory.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// No configured server has that address and an export containing the path.
    #[error(
        "no configured NFS server has address {address:?} with an export containing {path:?}; if the server was removed from the config, add it back with drain: true until its volumes are gone"
    )]
    UnknownServer {
        /// The PV's `nfs.server`.
        address: String,
        /// The PV's `nfs.path`.
        path: String,
    },
    /// The path below the export is not a directory stowage makes.
    #[error("PV path {path:?} on NFS server {server} is not a stowage volume directory")]
    BadPath {
        /// The server.
        server: String,
        /// The PV's `nfs.path`.
        path: String,
        /// Why.
        #[source]
        source: NameError,
    },
}

/// Finds the server and directory of a PV from its `nfs.server` and `nfs.path` (the
/// address and the export path, exactly as [`plan`] wrote them). When exports of one
/// address nest, the longest matching export wins.
pub fn locate(servers: &[ServerSpec], address: &str, path: &str) -> Result<Located, LocateError> {
    let mut best: Option<(usize, &str)> = None;
    for (idx, s) in servers.iter().enumerate() {
        if s.address != address {
            continue;
        }
        let rest = if s.export == "/" {
            path.strip_prefix('/')
        } else {
            path.strip_prefix(s.export.as_str())
                .and_then(|r| r.strip_prefix('/'))
        };
        if let Some(rest) = rest
            && best.is_none_or(|(b, _)| servers[b].export.len() < s.export.len())
        {
            best = Some((idx, rest));
        }
    }
    let Some((server, rest)) = best else {
        return Err(LocateError::UnknownServer {
            address: address.to_string(),
            path: path.to_string(),
        });
    };
    let rel = RelDir::parse(rest).map_err(|source| LocateError::BadPath {
        server: servers[server].name.to_string(),
        path: path.to_string(),
        source,
    })?;
    Ok(Located { server, rel })
}

/// `<mount>/<rel>` of a located volume.
pub fn dir_of(servers: &[ServerSpec], located: &Located) -> Option<PathBuf> {
    servers
        .get(located.server)
        .map(|s| Path::new(&s.mount).join(located.rel.to_path()))
}

#[cfg(test)]
mod tests;
