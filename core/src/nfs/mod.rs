//! NFS cluster mode (`nfs.stowage.io`): spreads claim directories over several NFS exports
//! with a capacity-weighted, bounded-load consistent-hash ring, and finds them again.
//!
//! ```text
//!   config    servers (name, address, export, mount, weight, drain) from YAML or the source
//!             design's env (PROVISIONER_NAME, NFS_SERVER, NFS_PATH, LOG)
//!   ring      PURE: stable hash, weighted virtual nodes, bounded loads, skip reasons
//!   place     claim key <ns>/<claim>, layouts, reuse of existing data, PV -> server lookup
//!   dirs      create / delete / archive / keep, inside the mount only, no symlinks followed
//!   owner     PURE: ownership markers (.stowage-owner) and who may use a directory
//!   class     StorageClass parameters (archiveOnDelete, deleteFile, layout, directoryMode,
//!             adoptFromRecreatedNamespace)
//!   capacity  statvfs + PV sums -> NfsServerState -> ring weights, loads, metrics
//! ```
//!
//! The controller holds an [`NfsCluster`] and calls, in order:
//!
//! ```text
//!   start:      NfsConfig::load_file / from_process_env → check_mounts → NfsCluster::new
//!   every ~30s: capacity::tally(PVs) → NfsCluster::probe (blocking) → refresh → the
//!               controller's NfsMetrics::update (metrics live outside this module)
//!   provision:  NfsClassParams::parse → ClaimName::new, ClaimUid::parse,
//!               NamespaceUid::parse (from the index, if known)
//!               → NfsCluster::provision → PV with
//!               nfs { server: placement.address, path: placement.export_path }
//!   delete:     NfsCluster::delete(pv.nfs.server, pv.nfs.path, pv's claim, on_delete)
//! ```
//!
//! No Kubernetes client and no async here: everything but the directory and statvfs calls
//! is pure, and those are plain blocking filesystem calls (never a shell).
//!
//! ```
//! use stowage_core::ledger::Bytes;
//! use stowage_core::nfs::ring::{Epsilon, Ring, RingServer, ServerLoad};
//!
//! let ring = Ring::new(vec![RingServer::new("a", 1000), RingServer::new("b", 1000)]).unwrap();
//! let loads = vec![ServerLoad::ready(Bytes::ZERO), ServerLoad::ready(Bytes::ZERO)];
//! let choice = ring
//!     .place("shop/data", Bytes::gib(10), &loads, Some(Epsilon::default()))
//!     .unwrap();
//! assert!(choice.server < 2);
//! ```

pub mod capacity;
pub mod class;
pub mod config;
pub mod dirs;
pub mod owner;
pub mod place;
pub mod ring;

use std::time::SystemTime;

use crate::ledger::Bytes;
use crate::volume::OnDelete;

pub use capacity::{Allocation, NfsServerState};
pub use class::{NfsClassError, NfsClassParams};
pub use config::{ConfigError, NfsConfig, ServerName, ServerSpec};
pub use dirs::{DirError, Removed, ServerRoot};
pub use owner::{ClaimUid, Marker, NamespaceNow, NamespaceUid, NotOurs, Owner};
pub use place::{
    ClaimName, Layout, LocateError, Overlap, PlaceError, RelDir, ServerDir, UsedDir, overlap,
};
pub use ring::{Epsilon, Ring, RingError, Skip};

/// Why an NFS provisioning or deletion step failed.
#[derive(Debug, thiserror::Error)]
pub enum NfsError {
    /// No server could be chosen.
    #[error("cannot place claim {claim}")]
    Place {
        /// The claim.
        claim: String,
        /// Why.
        #[source]
        source: PlaceError,
    },
    /// The directory could not be made or removed.
    #[error("NFS server {server}: volume directory {rel}")]
    Dir {
        /// The server.
        server: String,
        /// The directory.
        rel: RelDir,
        /// Why.
        #[source]
        source: DirError,
    },
    /// A PV's `nfs` source leads to no configured server.
    #[error(transparent)]
    Locate(#[from] LocateError),
    /// The ring could not be built from the servers.
    #[error(transparent)]
    Ring(#[from] RingError),
}

impl NfsError {
    /// A stable PascalCase reason for Events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            NfsError::Place { source, .. } => source.reason(),
            NfsError::Dir { source, .. } => source.reason(),
            NfsError::Locate(_) => "NfsUnknownVolume",
            NfsError::Ring(_) => "NfsRingInvalid",
        }
    }

    /// The directory refused as not the claim's, if that is the error.
    pub fn not_ours(&self) -> Option<&NotOurs> {
        match self {
            NfsError::Place {
                source: PlaceError::NotOurs { refused, .. },
                ..
            }
            | NfsError::Dir {
                source: DirError::NotOurs(refused),
                ..
            } => Some(refused.as_ref()),
            _ => None,
        }
    }

    /// Whether retrying later can help (an outage, a full server) rather than a change by an
    /// operator (a symlink in the way, a PV of a removed server, data on two servers, a
    /// directory that is another claim's).
    pub fn is_transient(&self) -> bool {
        match self {
            NfsError::Place { source, .. } => !matches!(
                source,
                PlaceError::Ambiguous { .. } | PlaceError::NotOurs { .. } | PlaceError::Overlaps(_)
            ),
            NfsError::Dir { source, .. } => matches!(source, DirError::Io { .. }),
            NfsError::Locate(_) | NfsError::Ring(_) => false,
        }
    }
}

/// The NFS servers, their last known state and the ring built from it.
#[derive(Clone, Debug)]
pub struct NfsCluster {
    config: NfsConfig,
    states: Vec<NfsServerState>,
    ring: Ring,
}

impl NfsCluster {
    /// A cluster whose servers are all "not probed yet" (unreachable) until the first
    /// [`NfsCluster::refresh`].
    pub fn new(config: NfsConfig) -> Result<Self, NfsError> {
        let states: Vec<NfsServerState> = config
            .servers
            .iter()
            .map(|s| {
                NfsServerState::unreachable(s, Allocation::default(), "not probed yet".to_string())
            })
            .collect();
        let ring = Ring::new(capacity::ring_servers(&states))?;
        Ok(NfsCluster {
            config,
            states,
            ring,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &NfsConfig {
        &self.config
    }

    /// The servers' last known states, in config order.
    pub fn states(&self) -> &[NfsServerState] {
        &self.states
    }

    /// The ring.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Probes every server's mount (blocking statvfs; see [`capacity::probe`]) with the
    /// given allocations (from [`capacity::tally`], config order; missing ones count zero).
    pub fn probe(&self, allocations: &[Allocation]) -> Vec<NfsServerState> {
        self.config
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| capacity::probe(s, allocations.get(i).copied().unwrap_or_default()))
            .collect()
    }

    /// Takes new server states (config order, one per server) and rebuilds the ring if the
    /// weights changed. Returns whether the ring was rebuilt.
    pub fn refresh(&mut self, states: Vec<NfsServerState>) -> Result<bool, NfsError> {
        let servers = capacity::ring_servers(&states);
        let rebuilt = !self.ring.is_built_from(&servers);
        if rebuilt {
            self.ring = Ring::new(servers)?;
        }
        self.states = states;
        Ok(rebuilt)
    }

    /// Counts a volume just provisioned on `server` into its allocation, so the next
    /// placement sees it before the next [`NfsCluster::refresh`].
    pub fn note_provisioned(&mut self, server: usize, size: Bytes) {
        if let Some(s) = self.states.get_mut(server) {
            s.allocated = s.allocated.saturating_add(size);
            s.volumes += 1;
            if let Some(a) = s.available.as_mut() {
                *a = a.saturating_sub(size);
            }
        }
    }

    /// Counts `extra` bytes more for a volume of `server` that was just grown, so the next
    /// placement sees them before the next [`NfsCluster::refresh`] (which recounts every
    /// PV's capacity). The directory has no quota: this is accounting only.
    pub fn note_grown(&mut self, server: usize, extra: Bytes) {
        if let Some(s) = self.states.get_mut(server) {
            s.allocated = s.allocated.saturating_add(extra);
            if let Some(a) = s.available.as_mut() {
                *a = a.saturating_sub(extra);
            }
        }
    }

    /// Places `claim` (reusing a directory that already exists on some server and is the
    /// claim's, otherwise asking the ring) and makes its directory, marked as the claim's
    /// (uid `uid`, namespace uid `namespace_uid` when known). Idempotent: calling it again
    /// for the same claim, or for a re-created claim of the same namespace and name, finds
    /// the directory and returns the same server. A directory of the claim's name that
    /// another claim's or a namespace's marker claims is refused ([`PlaceError::NotOurs`],
    /// [`DirError::NotOurs`]), and so is one whose marker records another uid for the
    /// claim's namespace (a namespace deleted and re-created) unless `params` allows it, and
    /// one that is, holds or lies inside a directory in `used` (the other PVs of the
    /// provisioner, [`place::clash`]; [`PlaceError::Overlaps`]), before anything is made.
    ///
    /// Blocking filesystem I/O (see [`place::lookup`]).
    pub fn provision(
        &self,
        claim: &ClaimName,
        uid: &ClaimUid,
        namespace_uid: Option<&NamespaceUid>,
        size: Bytes,
        params: &NfsClassParams,
        used: &[UsedDir],
    ) -> Result<ServerDir, NfsError> {
        let owner = Owner {
            claim: claim.clone(),
            uid: uid.clone(),
            layout: params.layout,
            namespace: NamespaceNow {
                uid: namespace_uid.cloned(),
                adopt_recreated: params.adopt_from_recreated_namespace,
            },
        };
        let found = place::lookup(&self.config.servers, &owner);
        let loads = capacity::loads(&self.states);
        let req = place::PlaceRequest {
            claim,
            size,
            layout: params.layout,
            epsilon: Some(self.config.epsilon),
        };
        let placement = place::plan(&self.config.servers, &self.ring, &loads, req, &found)
            .map_err(|source| NfsError::Place {
                claim: claim.to_string(),
                source,
            })?;
        if let Some((other, how)) = place::clash(&placement, claim, used) {
            return Err(NfsError::Place {
                claim: claim.to_string(),
                source: PlaceError::Overlaps(Box::new(place::Overlapping {
                    claim: claim.to_string(),
                    server: placement.server_name.to_string(),
                    address: placement.address.clone(),
                    path: placement.export_path.clone(),
                    other: other.clone(),
                    how,
                })),
            });
        }
        let dir_err = |source| NfsError::Dir {
            server: placement.server_name.to_string(),
            rel: placement.rel.clone(),
            source,
        };
        let root =
            ServerRoot::open(&self.config.servers[placement.server].mount).map_err(dir_err)?;
        root.create(&owner, params.directory_mode)
            .map_err(dir_err)?;
        Ok(placement)
    }

    /// Deletes, archives or keeps the directory of the PV with `nfs.server = address` and
    /// `nfs.path = path`, made for `claim` (its `claimRef`; `None` if it names none), as
    /// `on_delete` says. Idempotent. A directory that is not `claim`'s (see
    /// [`ServerRoot::remove`]) is left alone with [`DirError::NotOurs`].
    ///
    /// `on_delete` is best recorded on the PV when it is made (from
    /// [`NfsClassParams::on_delete`]), since the class may change or go before the PV does.
    pub fn delete(
        &self,
        address: &str,
        path: &str,
        claim: Option<&ClaimName>,
        on_delete: OnDelete,
        now: SystemTime,
    ) -> Result<Removed, NfsError> {
        let located = place::locate(&self.config.servers, address, path)?;
        let spec = &self.config.servers[located.server];
        let dir_err = |source| NfsError::Dir {
            server: spec.name.to_string(),
            rel: located.rel.clone(),
            source,
        };
        let root = ServerRoot::open(&spec.mount).map_err(dir_err)?;
        root.remove(&located.rel, claim, on_delete, now)
            .map_err(dir_err)
    }
}

#[cfg(test)]
mod tests;
