//! The kinds the [`ClusterIndex`] keeps, one file each, and how a watch writes each in.
//!
//! Each file holds its kind's part of the index: the `apply_*`, `delete_*` and `reset_*`
//! (or `begin_*`, `stage_*`, `commit_*`) methods the watch calls, the `note_*` of the
//! writes this process makes itself, the readers of that kind, and its [`Indexed`]
//! implementation, which is all [`super::watch`] needs to watch it. The shared core (the
//! tables, the ledger kept from them, the triggers) is in the parent module.
//!
//! A kind takes a (re-)list one of two ways, named by [`Indexed::Relist`]:
//!
//! * [`Buffered`]: the list is buffered whole between `Init` and `InitDone`, then replaces
//!   the kind at once ([`Reset`]): StorageNodes, StorageClasses, Nodes, unbound pods and
//!   Namespaces, a few thousand small objects at most.
//! * [`Staged`]: each object is turned into a row as its page arrives, then the rows
//!   replace the kind ([`Stage`]): claims, LocalVolumes and PersistentVolumes, one object
//!   per volume, tens of thousands of them.
//!
//! Either way objects missing from a re-list disappear, and readers never see half a list.
//! Everything here is static dispatch on the watch (write) side; the readers are plain
//! methods of [`ClusterIndex`].

use parking_lot::RwLock;

use super::ClusterIndex;
use super::watch::Kind;

mod claim;
mod local_volume;
mod namespace;
mod node;
mod persistent_volume;
mod pod;
mod storage_class;
mod storage_node;

/// A kind of object the index keeps, as its watch writes it in.
pub trait Indexed: Sized {
    /// Which kind it is: its [`super::watch::Readiness`] flag and its name in logs and
    /// metrics.
    const KIND: Kind;
    /// How the watch takes a (re-)list of it: [`Buffered`] or [`Staged`].
    type Relist: Relist<Self>;

    /// Adds or replaces `object` (a watch's `Apply`).
    fn apply(index: &mut ClusterIndex, object: Self);

    /// Removes `object` (a watch's `Delete`).
    fn delete(index: &mut ClusterIndex, object: &Self);
}

/// A kind whose re-list is buffered whole and then replaces the kind at once.
pub trait Reset: Indexed {
    /// Replaces every object of the kind with `objects`.
    fn reset(index: &mut ClusterIndex, objects: Vec<Self>);
}

/// A kind whose re-list is turned into rows as the pages arrive, then committed.
pub trait Stage: Indexed {
    /// Starts a re-list: drops whatever an earlier, unfinished one staged.
    fn begin(index: &mut ClusterIndex);

    /// Adds an object of the re-list in progress.
    fn stage(index: &mut ClusterIndex, object: Self);

    /// Replaces every object of the kind with those staged.
    fn commit(index: &mut ClusterIndex);
}

/// One watch's (re-)list in progress of kind `K`: its `Init`, `InitApply` and `InitDone`
/// events. Each method takes the index's write lock for as long as it writes.
pub trait Relist<K>: Default + Send {
    /// A list starts (again): whatever an earlier one left is dropped, so a list cut short
    /// leaves nothing behind.
    fn start(&mut self, index: &RwLock<ClusterIndex>);

    /// One object of the list.
    fn add(&mut self, index: &RwLock<ClusterIndex>, object: K);

    /// The list is complete: the kind is replaced. Returns how many objects it had.
    fn finish(&mut self, index: &RwLock<ClusterIndex>) -> usize;
}

/// [`Relist`] of a [`Reset`] kind: the objects are buffered outside the index's lock, and
/// written in one go at the end.
#[derive(Debug)]
pub struct Buffered<K>(Vec<K>);

impl<K> Default for Buffered<K> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<K: Reset + Send> Relist<K> for Buffered<K> {
    fn start(&mut self, _index: &RwLock<ClusterIndex>) {
        self.0.clear();
    }

    fn add(&mut self, _index: &RwLock<ClusterIndex>, object: K) {
        self.0.push(object);
    }

    fn finish(&mut self, index: &RwLock<ClusterIndex>) -> usize {
        let listed = std::mem::take(&mut self.0);
        let count = listed.len();
        K::reset(&mut index.write(), listed);
        count
    }
}

/// [`Relist`] of a [`Stage`] kind: each object is staged in the index as it arrives; only
/// their count is kept here.
#[derive(Debug, Default)]
pub struct Staged(usize);

impl<K: Stage> Relist<K> for Staged {
    fn start(&mut self, index: &RwLock<ClusterIndex>) {
        self.0 = 0;
        K::begin(&mut index.write());
    }

    fn add(&mut self, index: &RwLock<ClusterIndex>, object: K) {
        self.0 += 1;
        K::stage(&mut index.write(), object);
    }

    fn finish(&mut self, index: &RwLock<ClusterIndex>) -> usize {
        K::commit(&mut index.write());
        std::mem::take(&mut self.0)
    }
}
