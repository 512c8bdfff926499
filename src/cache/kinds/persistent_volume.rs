//! PersistentVolumes (controller only): those whose `provisioned-by` annotation names the
//! node-local provisioner or one of the provisioners added with
//! [`ClusterIndex::keep_pvs_of`]; any other is dropped. Each is kept as a compact row of
//! the fields stowage reads ([`PvRow::FIELDS`]), by name, so the reconcilers read PVs from
//! the index instead of listing them. A re-list is turned into rows as its pages arrive
//! (`begin_*`, `stage_*`, `commit_*`), so 50,000 whole objects are never held at once.

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::ResourceExt;

use super::{Indexed, Stage, Staged};
use crate::api::names;
use crate::cache::watch::Kind;
use crate::cache::{ClusterIndex, Name, PvRow, Trigger, newer, relisted};

impl ClusterIndex {
    fn keeps_pv(&self, pv: &PersistentVolume) -> bool {
        let by = pv
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(names::ANNOTATION_PROVISIONED_BY));
        by.is_some_and(|p| *p == self.provisioner.0 || self.pv_provisioners.contains(p))
    }

    /// Adds or replaces a PersistentVolume (keyed by name) when it is one of stowage's; any
    /// other is dropped (and forgotten, should it have been one).
    pub fn apply_persistent_volume(&mut self, pv: PersistentVolume) {
        let name_text = pv.metadata.name.clone().unwrap_or_default();
        if !self.keeps_pv(&pv) {
            self.delete_persistent_volume(&name_text);
            return;
        }
        let name = Name::new(&name_text);
        let row = PvRow::new(&pv, &mut self.syms);
        let unchanged = self.pvs.get(&name).is_some_and(|old| old.rv == row.rv);
        let triggers = (!unchanged).then(|| self.pv_triggers(&name, &row));
        self.pvs.insert(name, row);
        self.fire(triggers.into_iter().flatten());
    }

    /// [`ClusterIndex::note_local_volume`] for a PersistentVolume this process has just
    /// written.
    pub fn note_persistent_volume(&mut self, pv: PersistentVolume) {
        let name = Name::new(pv.metadata.name.as_deref().unwrap_or_default());
        let old = self.pvs.get(&name).map(|row| &row.rv);
        if newer(old, pv.metadata.resource_version.as_deref()) {
            self.apply_persistent_volume(pv);
        }
    }

    /// Removes a PersistentVolume.
    pub fn delete_persistent_volume(&mut self, name: &str) {
        let name = Name::new(name);
        if let Some(row) = self.pvs.swap_remove(&name) {
            let triggers = self.pv_triggers(&name, &row);
            self.fire(triggers);
        }
    }

    /// Replaces every PersistentVolume with a re-list.
    pub fn reset_persistent_volumes(&mut self, pvs: impl IntoIterator<Item = PersistentVolume>) {
        self.begin_persistent_volumes();
        pvs.into_iter()
            .for_each(|pv| self.stage_persistent_volume(pv));
        self.commit_persistent_volumes();
    }

    /// Starts a re-list of PersistentVolumes: drops whatever an earlier, unfinished one
    /// staged.
    pub fn begin_persistent_volumes(&mut self) {
        self.staging.pvs.clear();
    }

    /// Adds a PersistentVolume of a re-list in progress (if it is one of stowage's);
    /// [`ClusterIndex::commit_persistent_volumes`] ends it.
    pub fn stage_persistent_volume(&mut self, pv: PersistentVolume) {
        if self.keeps_pv(&pv) {
            let name = Name::new(pv.metadata.name.as_deref().unwrap_or_default());
            let row = PvRow::new(&pv, &mut self.syms);
            self.staging.pvs.insert(name, row);
        }
    }

    /// Replaces every PersistentVolume with those staged; queues those that changed.
    pub fn commit_persistent_volumes(&mut self) {
        let mut fresh = std::mem::take(&mut self.staging.pvs);
        fresh.shrink_to_fit();
        let old = std::mem::replace(&mut self.pvs, fresh);
        let triggers = relisted(&old, &self.pvs, |row| &row.rv)
            .flat_map(|(name, row)| self.pv_triggers(name, row))
            .collect::<Vec<_>>();
        self.fire(triggers);
    }

    fn pv_triggers(&self, name: &Name, row: &PvRow) -> Vec<Trigger> {
        let mut triggers = vec![Trigger::Pv(name.to_string())];
        if let Some((ns, claim)) = row.claim_key(&self.syms) {
            triggers.push(Trigger::Claim(ns, claim));
        }
        triggers
    }

    /// The PersistentVolume called `name` if it is one of stowage's ([`PvRow::FIELDS`]).
    pub fn persistent_volume(&self, name: &str) -> Option<PersistentVolume> {
        self.pvs
            .get(&Name::new(name))
            .map(|row| row.to_object(name, &self.syms))
    }

    /// The names of every PersistentVolume kept.
    pub fn persistent_volume_names(&self) -> Vec<String> {
        self.pvs.keys().map(Name::to_string).collect()
    }

    /// Every PersistentVolume kept whose `provisioned-by` is `provisioner`.
    pub fn persistent_volumes_of(&self, provisioner: &str) -> Vec<PersistentVolume> {
        let Some(sym) = self.syms.lookup(provisioner) else {
            return Vec::new();
        };
        self.pvs
            .iter()
            .filter(|(_, row)| row.provisioned_by == Some(sym))
            .map(|(name, row)| row.to_object(&name.to_string(), &self.syms))
            .collect()
    }
}

impl Indexed for PersistentVolume {
    const KIND: Kind = Kind::PersistentVolume;
    type Relist = Staged;

    fn apply(index: &mut ClusterIndex, object: Self) {
        index.apply_persistent_volume(object);
    }

    fn delete(index: &mut ClusterIndex, object: &Self) {
        index.delete_persistent_volume(&object.name_any());
    }
}

impl Stage for PersistentVolume {
    fn begin(index: &mut ClusterIndex) {
        index.begin_persistent_volumes();
    }

    fn stage(index: &mut ClusterIndex, object: Self) {
        index.stage_persistent_volume(object);
    }

    fn commit(index: &mut ClusterIndex) {
        index.commit_persistent_volumes();
    }
}
