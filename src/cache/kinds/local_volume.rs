//! LocalVolumes: one per node-local volume, tens of thousands of them. Each is kept as a
//! compact row of the fields stowage reads ([`VolumeRow::FIELDS`]), by name; its size
//! counts as allocated on its node and pool in the ledger, and its appearance ends the
//! reservation of the claim it was made for.
//!
//! Beside the rows the index keeps the LocalVolumes this process decided to create and has
//! not had answered yet ([`ClusterIndex::assume_local_volume`], kube-scheduler's assume
//! cache), counted as allocated on their node so the node's next decision need not wait
//! for the create; a re-list never drops one. A re-list is turned into rows as its pages
//! arrive (`begin_*`, `stage_*`, `commit_*`), so 50,000 whole objects are never held at
//! once.

use kube::ResourceExt;

use super::{Indexed, Stage, Staged};
use crate::api::local_volume::LocalVolume;
use crate::cache::watch::Kind;
use crate::cache::{Assumed, ClusterIndex, Name, Trigger, VolumeRow, newer, relisted};

impl ClusterIndex {
    /// Adds or replaces a LocalVolume (keyed by name).
    pub fn apply_local_volume(&mut self, volume: LocalVolume) {
        let name = Name::new(volume.metadata.name.as_deref().unwrap_or_default());
        let row = VolumeRow::new(&volume, &mut self.syms);
        let unchanged = self.volumes.get(&name).is_some_and(|old| old.rv == row.rv);
        let triggers = (!unchanged).then(|| self.volume_triggers(&name, &row));
        let before = self.counted(&name);
        self.volumes.insert(name.clone(), row);
        self.recount(&name, before);
        self.fire(triggers.into_iter().flatten());
    }

    /// Records a LocalVolume this process has just written (the answer to its create or
    /// patch), so the next fit check counts it before the watch delivers it. Unlike
    /// [`ClusterIndex::apply_local_volume`] (the watch, always in order) it never replaces a
    /// newer version: the watch may already have delivered a later change (an agent marks a
    /// volume Ready within milliseconds of its creation), which this older answer must not
    /// undo. It is kept when the index has no version of it, or an older one where resource
    /// versions compare as numbers (etcd's); otherwise the index's own is kept.
    pub fn note_local_volume(&mut self, volume: LocalVolume) {
        let name = Name::new(volume.metadata.name.as_deref().unwrap_or_default());
        let old = self.volumes.get(&name).map(|row| &row.rv);
        if newer(old, volume.metadata.resource_version.as_deref()) {
            self.apply_local_volume(volume);
        }
    }

    /// Counts `volume` as allocated on its node until [`ClusterIndex::forget_assumed`],
    /// before it is created: the decision that it fits and this entry are made under the
    /// node's lock, and the create happens after it is released. Once the watch or the
    /// create's answer has put the LocalVolume itself in the index, that is counted instead
    /// (never both).
    pub fn assume_local_volume(&mut self, volume: &LocalVolume) {
        let name = Name::new(volume.metadata.name.as_deref().unwrap_or_default());
        let assumed = Assumed {
            node: self.syms.intern(&volume.spec.node_name),
            pool: self.syms.intern(&volume.spec.pool),
            size: volume.spec.size_bytes,
        };
        let before = self.counted(&name);
        self.assumed.insert(name.clone(), assumed);
        self.recount(&name, before);
    }

    /// Ends [`ClusterIndex::assume_local_volume`] for the LocalVolume `name`, whether its
    /// create succeeded (then its row counts) or failed.
    pub fn forget_assumed(&mut self, name: &str) {
        let name = Name::new(name);
        let before = self.counted(&name);
        if self.assumed.remove(&name).is_some() {
            self.recount(&name, before);
        }
    }

    /// Removes a LocalVolume.
    pub fn delete_local_volume(&mut self, name: &str) {
        let name = Name::new(name);
        let before = self.counted(&name);
        if let Some(row) = self.volumes.swap_remove(&name) {
            self.recount(&name, before);
            let triggers = self.volume_triggers(&name, &row);
            self.fire(triggers);
        }
    }

    /// Replaces every LocalVolume with a re-list.
    pub fn reset_local_volumes(&mut self, volumes: impl IntoIterator<Item = LocalVolume>) {
        self.begin_local_volumes();
        volumes.into_iter().for_each(|v| self.stage_local_volume(v));
        self.commit_local_volumes();
    }

    /// Starts a re-list of LocalVolumes: drops whatever an earlier, unfinished one staged.
    pub fn begin_local_volumes(&mut self) {
        self.staging.volumes.clear();
    }

    /// Adds a LocalVolume of a re-list in progress; [`ClusterIndex::commit_local_volumes`]
    /// ends it.
    pub fn stage_local_volume(&mut self, volume: LocalVolume) {
        let name = Name::new(volume.metadata.name.as_deref().unwrap_or_default());
        let row = VolumeRow::new(&volume, &mut self.syms);
        self.staging.volumes.insert(name, row);
    }

    /// Replaces every LocalVolume with those staged; queues those that changed.
    pub fn commit_local_volumes(&mut self) {
        let mut fresh = std::mem::take(&mut self.staging.volumes);
        fresh.shrink_to_fit();
        let old = std::mem::replace(&mut self.volumes, fresh);
        let triggers = relisted(&old, &self.volumes, |row| &row.rv)
            .flat_map(|(name, row)| self.volume_triggers(name, row))
            .collect::<Vec<_>>();
        self.retally();
        self.fire(triggers);
    }

    fn volume_triggers(&self, name: &Name, row: &VolumeRow) -> [Trigger; 3] {
        let name = name.to_string();
        [
            Trigger::Volume(name.clone()),
            Trigger::Pv(name),
            Trigger::Claim(
                self.syms.string(row.claim_namespace),
                row.claim_name.to_string(),
            ),
        ]
    }

    /// The LocalVolume called `name` ([`VolumeRow::FIELDS`]).
    pub fn local_volume(&self, name: &str) -> Option<LocalVolume> {
        self.volumes
            .get(&Name::new(name))
            .map(|row| row.to_object(name, &self.syms))
    }

    /// The names of every LocalVolume.
    pub fn local_volume_names(&self) -> Vec<String> {
        self.volumes.keys().map(Name::to_string).collect()
    }

    /// Whether this process is creating the LocalVolume `name` right now (see
    /// [`ClusterIndex::assume_local_volume`]).
    pub fn is_assumed(&self, name: &str) -> bool {
        self.assumed.contains_key(&Name::new(name))
    }

    /// The node of the LocalVolume `name` this process is creating right now, if it is.
    pub fn assumed_node(&self, name: &str) -> Option<String> {
        self.assumed
            .get(&Name::new(name))
            .map(|a| self.syms.string(a.node))
    }
}

impl Indexed for LocalVolume {
    const KIND: Kind = Kind::LocalVolume;
    type Relist = Staged;

    fn apply(index: &mut ClusterIndex, object: Self) {
        index.apply_local_volume(object);
    }

    fn delete(index: &mut ClusterIndex, object: &Self) {
        index.delete_local_volume(&object.name_any());
    }
}

impl Stage for LocalVolume {
    fn begin(index: &mut ClusterIndex) {
        index.begin_local_volumes();
    }

    fn stage(index: &mut ClusterIndex, object: Self) {
        index.stage_local_volume(object);
    }

    fn commit(index: &mut ClusterIndex) {
        index.commit_local_volumes();
    }
}
