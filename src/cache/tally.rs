//! The ledger's running sums: allocated and reserved bytes per (node, pool), kept by deltas
//! as objects come and go, so no extender request ever re-derives them.
//!
//! [`ClusterIndex`](super::ClusterIndex) calls [`Tally::allocate`] and [`Tally::free`] for
//! every LocalVolume (and assumed one) it gains or loses, and [`Tally::hold`] and
//! [`Tally::unhold`] for every claim whose reservation starts or ends. Sums are `u128`, so
//! adding and taking away are exact inverses whatever the sizes; a sum is shown as
//! `u64::MAX` when it does not fit, what the saturating sum of a from-scratch derivation
//! gives.
//!
//! Beside the sums it keeps the two indexes the index's deltas need: which claims hold a
//! reservation on each node ([`Tally::holds_on`], what the provisioner lists), and which
//! unbound claim with a selected node waits for which LocalVolume name
//! ([`Tally::waiting_for`]), because a LocalVolume's arrival ends its claim's reservation.

use std::collections::{HashMap, HashSet};

use super::rows::{Name, Sym};
use crate::ledger::Bytes;

/// A claim's key in the index: namespace symbol and name.
pub(super) type ClaimId = (Sym, Box<str>);

/// Where a claim's reservation is, and how big.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Hold {
    pub(super) node: Sym,
    pub(super) pool: Sym,
    pub(super) bytes: u64,
}

/// The running sums and the indexes beside them; see the module docs.
#[derive(Debug, Default)]
pub(super) struct Tally {
    allocated: HashMap<(Sym, Sym), u128>,
    reserved: HashMap<(Sym, Sym), u128>,
    holds: HashMap<ClaimId, Hold>,
    holds_on: HashMap<Sym, HashSet<ClaimId>>,
    waiting: HashMap<Name, ClaimId>,
}

impl Tally {
    /// Counts `bytes` more as allocated in `pool` on `node`.
    pub(super) fn allocate(&mut self, node: Sym, pool: Sym, bytes: u64) {
        *self.allocated.entry((node, pool)).or_default() += u128::from(bytes);
    }

    /// Counts `bytes` fewer as allocated in `pool` on `node`: the inverse of
    /// [`Tally::allocate`] with the same arguments.
    pub(super) fn free(&mut self, node: Sym, pool: Sym, bytes: u64) {
        take(&mut self.allocated, (node, pool), bytes);
    }

    /// Records the reservation of claim `id`, replacing any it had.
    pub(super) fn hold(&mut self, id: ClaimId, hold: Hold) {
        self.unhold(&id);
        *self.reserved.entry((hold.node, hold.pool)).or_default() += u128::from(hold.bytes);
        self.holds_on
            .entry(hold.node)
            .or_default()
            .insert(id.clone());
        self.holds.insert(id, hold);
    }

    /// Ends the reservation of claim `id`, if it had one; what it was.
    pub(super) fn unhold(&mut self, id: &ClaimId) -> Option<Hold> {
        let hold = self.holds.remove(id)?;
        take(&mut self.reserved, (hold.node, hold.pool), hold.bytes);
        if let Some(on) = self.holds_on.get_mut(&hold.node) {
            on.remove(id);
            if on.is_empty() {
                self.holds_on.remove(&hold.node);
            }
        }
        Some(hold)
    }

    /// Notes that claim `id` waits for the LocalVolume `volume` (it is unbound and has a
    /// selected node).
    pub(super) fn wait(&mut self, volume: Name, id: ClaimId) {
        self.waiting.insert(volume, id);
    }

    /// Ends [`Tally::wait`] for `volume` if claim `id` is the one waiting for it.
    pub(super) fn stop_waiting(&mut self, volume: &Name, id: &ClaimId) {
        if self.waiting.get(volume) == Some(id) {
            self.waiting.remove(volume);
        }
    }

    /// The claim waiting for the LocalVolume `volume`, if any.
    pub(super) fn waiting_for(&self, volume: &Name) -> Option<&ClaimId> {
        self.waiting.get(volume)
    }

    /// Every claim waiting for its LocalVolume.
    pub(super) fn waiting(&self) -> impl Iterator<Item = &ClaimId> {
        self.waiting.values()
    }

    /// Bytes allocated in `pool` on `node`.
    pub(super) fn allocated(&self, node: Sym, pool: Sym) -> Bytes {
        shown(self.allocated.get(&(node, pool)))
    }

    /// Bytes reserved in `pool` on `node`.
    pub(super) fn reserved(&self, node: Sym, pool: Sym) -> Bytes {
        shown(self.reserved.get(&(node, pool)))
    }

    /// The claims holding a reservation on `node`, with their reservations.
    pub(super) fn holds_on(&self, node: Sym) -> impl Iterator<Item = (&ClaimId, &Hold)> {
        self.holds_on
            .get(&node)
            .into_iter()
            .flatten()
            .filter_map(|id| self.holds.get(id).map(|hold| (id, hold)))
    }
}

/// Takes `bytes` from the sum at `key`, dropping the entry at zero.
fn take(sums: &mut HashMap<(Sym, Sym), u128>, key: (Sym, Sym), bytes: u64) {
    if let Some(sum) = sums.get_mut(&key) {
        *sum = sum.saturating_sub(u128::from(bytes));
        if *sum == 0 {
            sums.remove(&key);
        }
    }
}

fn shown(sum: Option<&u128>) -> Bytes {
    Bytes(sum.map_or(0, |&s| u64::try_from(s).unwrap_or(u64::MAX)))
}
