//! PersistentVolumeClaims: one per volume, tens of thousands of them. Each is kept as a
//! compact row of the fields stowage reads ([`ClaimRow::FIELDS`]), by `(namespace, name)`.
//! A claim of a node-local class with a `selected-node` and no LocalVolume yet holds a
//! reservation on that node in the ledger, which ends with its binding or its LocalVolume;
//! the pod's own claims are its demand. A re-list is turned into rows as its pages arrive
//! (`begin_*`, `stage_*`, `commit_*`), so 50,000 whole objects are never held at once.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::ResourceExt;

use super::{Indexed, Stage, Staged};
use crate::cache::watch::Kind;
use crate::cache::{ClaimRow, ClusterIndex, Name, Sym, Trigger, newer, relisted};

impl ClusterIndex {
    /// Adds or replaces a claim (keyed by namespace and name).
    pub fn apply_claim(&mut self, claim: PersistentVolumeClaim) {
        let key = self.claim_id(&claim);
        let row = ClaimRow::new(&claim, &mut self.syms);
        let unchanged = self.claims.get(&key).is_some_and(|old| old.rv == row.rv);
        let triggers = (!unchanged).then(|| self.claim_triggers(&key, &row));
        if let Some(old) = self.claims.insert(key.clone(), row) {
            self.tally.stop_waiting(&Name::for_uid(&old.uid), &key);
        }
        self.track_claim(&key);
        self.fire(triggers.into_iter().flatten());
    }

    /// [`ClusterIndex::note_local_volume`] for a claim this process has just written.
    pub fn note_claim(&mut self, claim: PersistentVolumeClaim) {
        let old = self
            .claim_row(
                claim.metadata.namespace.as_deref().unwrap_or_default(),
                claim.metadata.name.as_deref().unwrap_or_default(),
            )
            .map(|row| &row.rv);
        if newer(old, claim.metadata.resource_version.as_deref()) {
            self.apply_claim(claim);
        }
    }

    /// Removes a claim.
    pub fn delete_claim(&mut self, namespace: &str, name: &str) {
        let Some(ns) = self.syms.lookup(namespace) else {
            return;
        };
        let key = (ns, Box::<str>::from(name));
        if let Some(row) = self.claims.swap_remove(&key) {
            self.tally.stop_waiting(&Name::for_uid(&row.uid), &key);
            self.retrack_claim(&key);
            let triggers = self.claim_triggers(&key, &row);
            self.fire(triggers);
        }
    }

    /// Replaces every claim with a re-list.
    pub fn reset_claims(&mut self, claims: impl IntoIterator<Item = PersistentVolumeClaim>) {
        self.begin_claims();
        claims.into_iter().for_each(|c| self.stage_claim(c));
        self.commit_claims();
    }

    /// Starts a re-list of claims: drops whatever an earlier, unfinished one staged.
    pub fn begin_claims(&mut self) {
        self.staging.claims.clear();
    }

    /// Adds a claim of a re-list in progress; [`ClusterIndex::commit_claims`] ends it.
    pub fn stage_claim(&mut self, claim: PersistentVolumeClaim) {
        let key = self.claim_id(&claim);
        let row = ClaimRow::new(&claim, &mut self.syms);
        self.staging.claims.insert(key, row);
    }

    /// Replaces every claim with those staged; queues those that changed.
    pub fn commit_claims(&mut self) {
        let mut fresh = std::mem::take(&mut self.staging.claims);
        fresh.shrink_to_fit();
        let old = std::mem::replace(&mut self.claims, fresh);
        let triggers = relisted(&old, &self.claims, |row| &row.rv)
            .flat_map(|(key, row)| self.claim_triggers(key, row))
            .collect::<Vec<_>>();
        self.retally();
        self.fire(triggers);
    }

    fn claim_id(&mut self, claim: &PersistentVolumeClaim) -> (Sym, Box<str>) {
        (
            self.syms
                .intern(claim.metadata.namespace.as_deref().unwrap_or_default()),
            claim.metadata.name.as_deref().unwrap_or_default().into(),
        )
    }

    /// The claim itself and, when one exists, the LocalVolume named after its uid (whose
    /// orphan check depends on the claim).
    fn claim_triggers(&self, key: &(Sym, Box<str>), row: &ClaimRow) -> Vec<Trigger> {
        let mut triggers = vec![Trigger::Claim(self.syms.string(key.0), key.1.to_string())];
        let volume = Name::for_uid(&row.uid);
        if self.volumes.contains_key(&volume) {
            triggers.push(Trigger::Volume(volume.to_string()));
        }
        triggers
    }

    /// The claim `namespace/name` ([`ClaimRow::FIELDS`]).
    pub fn claim(&self, namespace: &str, name: &str) -> Option<PersistentVolumeClaim> {
        self.claim_row(namespace, name)
            .map(|row| row.to_object(namespace, name, &self.syms))
    }

    /// The row of claim `namespace/name`.
    pub(in crate::cache) fn claim_row(&self, namespace: &str, name: &str) -> Option<&ClaimRow> {
        let ns = self.syms.lookup(namespace)?;
        self.claims.get(&(ns, Box::from(name)))
    }

    /// The namespace and name of every claim.
    pub fn claim_keys(&self) -> Vec<(String, String)> {
        self.claims
            .keys()
            .map(|(ns, name)| (self.syms.string(*ns), name.to_string()))
            .collect()
    }
}

impl Indexed for PersistentVolumeClaim {
    const KIND: Kind = Kind::PersistentVolumeClaim;
    type Relist = Staged;

    fn apply(index: &mut ClusterIndex, object: Self) {
        index.apply_claim(object);
    }

    fn delete(index: &mut ClusterIndex, object: &Self) {
        index.delete_claim(&object.namespace().unwrap_or_default(), &object.name_any());
    }
}

impl Stage for PersistentVolumeClaim {
    fn begin(index: &mut ClusterIndex) {
        index.begin_claims();
    }

    fn stage(index: &mut ClusterIndex, object: Self) {
        index.stage_claim(object);
    }

    fn commit(index: &mut ClusterIndex) {
        index.commit_claims();
    }
}
