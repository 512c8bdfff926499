//! Which provisioning flow owns a claim or a PersistentVolume, chosen by provisioner name:
//! a claim by its StorageClass's `provisioner`, a PV by its `pv.kubernetes.io/provisioned-by`.
//!
//! ```text
//!   claim ─▶ class.provisioner ─┐                 ┌─▶ Local: claim.rs, expand.rs, release.rs
//!                               ├─▶ Backend::of ──┤
//!   PV ─▶ provisioned-by ───────┘                 └─▶ Nfs:   nfs_volumes.rs
//! ```
//!
//! The choice is made here once for both reconcilers; neither flow imports the other. An
//! enum rather than a trait object: there are two backends, and dispatch stays static.

use std::sync::Arc;

use super::Context;
use super::nfs_volumes::Nfs;

/// A provisioning flow this controller runs.
#[derive(Clone, Debug)]
pub enum Backend {
    /// Node-local volumes (`--provisioner`, default `local.stowage.io`).
    Local,
    /// Volumes on the NFS servers (the NFS mode's provisioner name).
    Nfs(Arc<Nfs>),
}

impl Backend {
    /// The backend whose provisioner name is `provisioner`, if this controller runs it.
    pub fn of(provisioner: &str, ctx: &Context) -> Option<Backend> {
        if provisioner == ctx.config.provisioner {
            return Some(Backend::Local);
        }
        ctx.nfs
            .as_ref()
            .filter(|nfs| nfs.provisioner() == provisioner)
            .map(|nfs| Backend::Nfs(nfs.clone()))
    }
}
