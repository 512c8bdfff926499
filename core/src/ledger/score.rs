//! How good a fitting node is for a pod's demand, on the extender protocol's 0..=10 scale.
//!
//! Both policies look at the share of the demanded pools' allocatable space that would be
//! left free after the pod's claims are placed:
//!
//! ```text
//!   left  = Σ over demanded pools p of (free(p) − demand(p))
//!   whole = Σ over demanded pools p of allocatable(p)
//!   spread  = round(10 × left / whole)      most room left after placement wins
//!   binpack = 10 − spread                   least room left that still fits wins
//! ```
//!
//! A share, not an absolute size, because what the cluster's balance is judged by is
//! utilization: with absolute free space a 4 TiB node would take every claim until it had
//! no more room left than a 500 GiB node, and end 90 % full while the small one sat empty.
//! kube-scheduler multiplies the score by `weight × 10` and adds it to its own plugins'
//! scores; a score outside 0..=10 would silently dominate them, so it can never leave it.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use super::{Bytes, Demand, NodeState};

/// The highest score the extender protocol allows (`MaxExtenderPriority`).
pub const MAX_SCORE: u8 = 10;

/// How a StorageClass wants its volumes placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Placement {
    /// Prefer the node with the most room left after placement: even utilization, and room
    /// for each volume to grow.
    #[default]
    Spread,
    /// Prefer the node with the least room left that still fits: keeps whole nodes free for
    /// large claims.
    Binpack,
}

impl Placement {
    /// The policy's name as written in a StorageClass's `placement` parameter.
    #[inline]
    pub const fn as_str(self) -> &'static str {
        match self {
            Placement::Spread => "spread",
            Placement::Binpack => "binpack",
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Placement {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "spread" => Ok(Placement::Spread),
            "binpack" => Ok(Placement::Binpack),
            other => Err(format!(
                "unknown placement {other:?}; use \"spread\" or \"binpack\""
            )),
        }
    }
}

/// The share of the demanded pools left free after placement, as `(left, whole)` in bytes.
/// `None` when the demand does not fit or asks for no pool.
#[inline]
pub fn room_after(node: &NodeState, demand: &Demand) -> Option<(u128, u128)> {
    let mut left: u128 = 0;
    let mut whole: u128 = 0;
    for (pool_name, needed) in demand.pools() {
        let pool = node.pool(pool_name.as_str())?;
        let after: Bytes = pool.free().checked_sub(needed)?;
        left += u128::from(after.0);
        whole += u128::from(pool.allocatable().0);
    }
    (whole > 0).then_some((left, whole))
}

/// The node's score for `demand` under `placement`, in `0..=MAX_SCORE`.
///
/// Nodes that cannot take the demand, and demands that ask for nothing, score 0: the
/// extender filters the former and stays neutral on the latter.
#[inline]
pub fn score(node: &NodeState, demand: &Demand, placement: Placement) -> u8 {
    let Some((left, whole)) = room_after(node, demand) else {
        return 0;
    };
    score_share(left, whole, placement)
}

/// The score of a node with `left` of `whole` bytes of the demanded pools free after
/// placement (`left <= whole`): the arithmetic of [`score`], for callers that
/// keep per-pool free and allocatable bytes in their own compact form.
///
/// `left` is the sum over the demanded pools of `free − demand` (every pool must fit), and
/// `whole` the sum of their allocatable bytes. A `whole` of zero scores 0, as in [`score`].
#[inline]
pub fn score_share(left: u128, whole: u128, placement: Placement) -> u8 {
    if whole == 0 {
        return 0;
    }
    // Rounded integer division; left <= whole, so the result is at most MAX_SCORE.
    let spread = (left * u128::from(MAX_SCORE) + whole / 2) / whole;
    let spread = u8::try_from(spread.min(u128::from(MAX_SCORE))).unwrap_or(MAX_SCORE);
    match placement {
        Placement::Spread => spread,
        Placement::Binpack => MAX_SCORE - spread,
    }
}

/// Scores for the candidates of one request, normalized as kube-scheduler normalizes its own
/// plugins' scores: the best candidate gets [`MAX_SCORE`], the worst 0, the rest in
/// proportion (`0..=9`), so that a difference between the candidates shows however small
/// it is in absolute terms.
///
/// `rooms` yields each candidate's [`room_after`] in order (`None`: the demand does not fit
/// there; it scores 0). Returns the scores and the index of the one candidate that got
/// [`MAX_SCORE`]: exactly one does, so the extender knows where the scheduler will most
/// likely put the pod.
///
/// Candidates that are equally good (the same share, e.g. identical empty nodes) are ordered
/// by `tiebreak(i)`, lowest first, asked only for candidates that tie. The caller passes a
/// hash of the pod and the node: ties go to a different node for each pod, like
/// kube-scheduler's own random pick among equal scores, yet the extender knows which one it
/// put first.
///
/// Nothing is kept per candidate but its preference (16 bytes): the extender scores
/// thousands of candidates per request, and what a request holds is what pushes the index
/// it reads out of the CPU's caches.
#[inline]
pub fn normalize(
    rooms: impl IntoIterator<Item = Option<(u128, u128)>>,
    placement: Placement,
    tiebreak: impl Fn(usize) -> u64,
) -> (Vec<u8>, Option<usize>) {
    let values: Vec<Option<u64>> = rooms
        .into_iter()
        .map(|room| preference(room, placement))
        .collect();
    let mut top: Option<(usize, u64)> = None;
    let mut worst: Option<u64> = None;
    for (i, v) in values.iter().enumerate() {
        let Some(v) = *v else { continue };
        worst = Some(worst.map_or(v, |w| w.min(v)));
        top = match top {
            Some((t, tv)) if tv > v => Some((t, tv)),
            // The lower tiebreak wins; on equal tiebreaks the earlier candidate.
            Some((t, tv)) if tv == v && tiebreak(t) <= tiebreak(i) => Some((t, tv)),
            _ => Some((i, v)),
        };
    }
    let best = top.map(|(_, v)| v);
    let top = top.map(|(i, _)| i);
    let below = u128::from(MAX_SCORE - 1);
    let scores = values
        .iter()
        .enumerate()
        .map(|(i, v)| match (v, best, worst) {
            _ if Some(i) == top => MAX_SCORE,
            (Some(v), Some(best), Some(worst)) if best > worst => {
                let (v, best, worst) = (u128::from(*v), u128::from(best), u128::from(worst));
                u8::try_from(below * (v - worst) / (best - worst)).unwrap_or(MAX_SCORE - 1)
            }
            (Some(_), _, _) => MAX_SCORE - 1,
            (None, _, _) => 0,
        })
        .collect();
    (scores, top)
}

/// A fitting candidate's preference as a fixed-point fraction in `0..=2^32`, higher is
/// better: the share left for spread, the share used for binpack; `None` where the demand
/// does not fit. `left <= whole <= 2^70` for any real pool set, so the shift cannot
/// overflow, and the fraction fits in 64 bits.
#[inline]
fn preference(room: Option<(u128, u128)>, placement: Placement) -> Option<u64> {
    let (left, whole) = room?;
    if whole == 0 {
        return None;
    }
    let share = u64::try_from((left.min(whole) << 32) / whole).unwrap_or(1 << 32);
    Some(match placement {
        Placement::Spread => share,
        Placement::Binpack => (1u64 << 32) - share,
    })
}

/// The positions of the `k` best candidates, best first: the order of [`normalize`], so
/// `best(.., 1)` is its one [`MAX_SCORE`] (more room left for spread, less for binpack;
/// equally good candidates by `tiebreak(i)`, lowest first, then by position). Candidates
/// that do not fit (`None`) are never among them, so fewer than `k` may come back.
///
/// The extender's filter keeps the scheduler to these when it is asked to narrow the
/// candidates (`--extender-keep-best`), offering each candidate to a [`Best`] as it checks
/// it; this is the same over a list.
pub fn best(
    rooms: impl IntoIterator<Item = Option<(u128, u128)>>,
    placement: Placement,
    tiebreak: impl Fn(usize) -> u64,
    k: usize,
) -> Vec<usize> {
    let mut best = Best::new(placement, tiebreak, k);
    for (i, room) in rooms.into_iter().enumerate() {
        best.offer(i, room);
    }
    best.positions()
}

/// The `k` best of the candidates offered so far, as [`best`] ranks them; candidates are
/// named by the position the caller gives them.
///
/// Filter keeps 20 of thousands, so the candidates are not all ranked. The best so far are
/// kept, cut back to `k` whenever they reach `2k`; after a cut, a candidate whose preference
/// is below the `k`-th kept one's cannot make the `k` best and is passed over with one
/// multiplication (`below`), neither divided nor kept. `tiebreak` is asked only while
/// cutting, of candidates that tie.
pub struct Best<T> {
    placement: Placement,
    tiebreak: T,
    k: usize,
    /// `(preference, position)` of the best so far: at most `2k`.
    kept: Vec<(u64, usize)>,
    /// The preference of the `k`-th best, once `k` have been kept through a cut.
    floor: Option<u64>,
}

impl<T: Fn(usize) -> u64> Best<T> {
    /// Keeps the `k` best, by `placement`, equal ones by `tiebreak(position)`.
    pub fn new(placement: Placement, tiebreak: T, k: usize) -> Self {
        Self {
            placement,
            tiebreak,
            k,
            kept: Vec::with_capacity(k.saturating_mul(2).min(1024)),
            floor: None,
        }
    }

    /// Offers the candidate at `position` with its room after the demand, `(left, whole)`
    /// ([`room_after`]); `None` where the demand does not fit, which is never kept.
    #[inline]
    pub fn offer(&mut self, position: usize, room: Option<(u128, u128)>) {
        if self.k == 0 {
            return;
        }
        if let (Some(floor), Some((left, whole))) = (self.floor, room)
            && below(left, whole, floor, self.placement)
        {
            return;
        }
        let Some(preference) = preference(room, self.placement) else {
            return;
        };
        self.kept.push((preference, position));
        if self.kept.len() >= self.k.saturating_mul(2) {
            self.cut();
            self.floor = self.kept.iter().map(|&(p, _)| p).min();
        }
    }

    /// The positions of the `k` best offered, best first.
    pub fn positions(mut self) -> Vec<usize> {
        if self.kept.len() > self.k {
            self.cut();
        }
        let tiebreak = &self.tiebreak;
        self.kept.sort_unstable_by(|a, b| order(tiebreak, a, b));
        self.kept.into_iter().map(|(_, i)| i).collect()
    }

    /// Keeps only the `k` best (`k > 0`, more than `k` kept).
    fn cut(&mut self) {
        let tiebreak = &self.tiebreak;
        self.kept
            .select_nth_unstable_by(self.k - 1, |a, b| order(tiebreak, a, b));
        self.kept.truncate(self.k);
    }
}

/// Best first: the higher preference, then the lower tiebreak, then the lower position.
fn order(tiebreak: &impl Fn(usize) -> u64, a: &(u64, usize), b: &(u64, usize)) -> Ordering {
    b.0.cmp(&a.0)
        .then_with(|| tiebreak(a.1).cmp(&tiebreak(b.1)))
        .then(a.1.cmp(&b.1))
}

/// Whether `preference(Some((left, whole)), placement) < Some(floor)`, the share compared by
/// multiplication rather than found by division: `floor(x / w) < f` exactly when
/// `x < f * w`. A `whole` past 64 bits (16 EiB, which no pool set comes near) is not
/// compared here (`false`), so such a room is decided by [`preference`] itself; below it
/// every product fits in 128 bits.
#[inline]
fn below(left: u128, whole: u128, floor: u64, placement: Placement) -> bool {
    let Ok(whole) = u64::try_from(whole) else {
        return false;
    };
    if whole == 0 {
        return false;
    }
    // `left.min(whole)` fits in 64 bits, as `whole` does.
    let left = u64::try_from(left).map_or(whole, |left| left.min(whole));
    let scaled = u128::from(left) << 32;
    let whole = u128::from(whole);
    match placement {
        // share < floor
        Placement::Spread => scaled < u128::from(floor) * whole,
        // 2^32 - share < floor, i.e. share >= 2^32 - floor + 1
        Placement::Binpack => match (1u64 << 32).checked_sub(floor) {
            Some(rest) => scaled >= u128::from(rest + 1) * whole,
            // A floor above every share: every preference is below it.
            None => true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Driver, PoolState};

    fn node(cap: u64, alloc: u64) -> NodeState {
        let mut p = PoolState::new("default", Driver::Btrfs, Bytes::gib(cap));
        p.allocated = Bytes::gib(alloc);
        NodeState::new("n", vec![p])
    }

    fn demand(gib: u64) -> Demand {
        Demand::from_claims([("default", Bytes::gib(gib))]).unwrap()
    }

    #[test]
    fn spread_prefers_the_emptiest_node_and_binpack_the_fullest_that_fits() {
        let empty = node(100, 0);
        let half = node(100, 50);
        let nearly = node(100, 85);
        let d = demand(10);
        assert_eq!(score(&empty, &d, Placement::Spread), 9);
        assert_eq!(score(&half, &d, Placement::Spread), 4);
        assert_eq!(score(&nearly, &d, Placement::Spread), 1);
        assert_eq!(score(&empty, &d, Placement::Binpack), 1);
        assert_eq!(score(&nearly, &d, Placement::Binpack), 9);
    }

    #[test]
    fn spread_compares_shares_so_a_big_node_is_not_filled_first() {
        // 4 TiB node 80 % full vs 500 GiB node empty: the small one has less absolute room
        // but far more relative room.
        let big = node(4096, 3277);
        let small = node(500, 0);
        let d = demand(10);
        assert!(score(&small, &d, Placement::Spread) > score(&big, &d, Placement::Spread));
    }

    #[test]
    fn nodes_that_do_not_fit_and_empty_demands_score_zero() {
        assert_eq!(score(&node(100, 95), &demand(10), Placement::Spread), 0);
        assert_eq!(score(&node(100, 95), &demand(10), Placement::Binpack), 0);
        assert_eq!(score(&node(100, 0), &Demand::new(), Placement::Spread), 0);
    }

    fn rooms(free_gib: &[Option<u128>]) -> Vec<Option<(u128, u128)>> {
        free_gib.iter().map(|f| f.map(|f| (f, 100))).collect()
    }

    #[test]
    fn normalized_scores_span_the_whole_range_with_one_best() {
        // Shares 50 %, 55 %, 60 % left: absolute scores would be 5, 6, 6 (a tie).
        let r = rooms(&[Some(50), Some(55), Some(60)]);
        let (spread, top) = normalize(r.iter().copied(), Placement::Spread, |i| [0, 0, 0][i]);
        assert_eq!(spread, [0, 4, 10]);
        assert_eq!(top, Some(2));
        let (binpack, top) = normalize(r.iter().copied(), Placement::Binpack, |i| [0, 0, 0][i]);
        assert_eq!(binpack, [10, 4, 0]);
        assert_eq!(top, Some(0));
    }

    #[test]
    fn equal_candidates_go_to_the_lowest_tiebreak_and_the_rest_stay_just_below() {
        let r = rooms(&[Some(70), Some(70), Some(70)]);
        let (scores, top) = normalize(r.iter().copied(), Placement::Spread, |i| [9, 3, 5][i]);
        assert_eq!(scores, [9, 10, 9]);
        assert_eq!(top, Some(1));
        // Two share the best value; the third is worse and scores 0.
        let r = rooms(&[Some(70), Some(40), Some(70)]);
        let (scores, top) = normalize(r.iter().copied(), Placement::Spread, |i| [8, 0, 2][i]);
        assert_eq!(scores, [9, 0, 10]);
        assert_eq!(top, Some(2));
    }

    #[test]
    fn candidates_that_do_not_fit_score_zero_and_are_never_best() {
        let r = rooms(&[None, Some(10), None]);
        let (scores, top) = normalize(r.iter().copied(), Placement::Spread, |i| [0, 1, 2][i]);
        assert_eq!(scores, [0, 10, 0]);
        assert_eq!(top, Some(1));
        let (scores, top) = normalize(rooms(&[None, None]), Placement::Binpack, |i| [0, 1][i]);
        assert_eq!(scores, [0, 0]);
        assert_eq!(top, None);
        assert_eq!(normalize([], Placement::Spread, |_| 0), (vec![], None));
    }

    /// A small deterministic generator for the property loops.
    fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    #[test]
    fn normalized_scores_never_leave_0_to_10_and_keep_the_order_of_the_shares() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15_u64);
        for _ in 0..2000 {
            let n = 1 + (next() % 12) as usize;
            let r: Vec<Option<(u128, u128)>> = (0..n)
                .map(|_| {
                    let whole = u128::from(next() % (1 << 40)) + 1;
                    (!next().is_multiple_of(5)).then(|| (u128::from(next()) % (whole + 1), whole))
                })
                .collect();
            let ties: Vec<u64> = (0..n).map(|_| next()).collect();
            for placement in [Placement::Spread, Placement::Binpack] {
                let (scores, top) = normalize(r.iter().copied(), placement, |i| ties[i]);
                assert!(scores.iter().all(|&s| s <= MAX_SCORE));
                assert_eq!(
                    scores.iter().filter(|&&s| s == MAX_SCORE).count(),
                    usize::from(top.is_some())
                );
                // A node with strictly more room (spread) or less (binpack) never scores
                // lower; compared by cross-multiplication, independently of the fixed point.
                for i in 0..n {
                    for j in 0..n {
                        let (Some((li, wi)), Some((lj, wj))) = (r[i], r[j]) else {
                            continue;
                        };
                        let i_better = match placement {
                            Placement::Spread => li * wj > lj * wi,
                            Placement::Binpack => li * wj < lj * wi,
                        };
                        if i_better {
                            assert!(scores[i] >= scores[j], "{r:?} {scores:?}");
                        }
                    }
                }
                for (i, room) in r.iter().enumerate() {
                    if room.is_none() {
                        assert_eq!(scores[i], 0);
                    }
                }
            }
        }
    }

    #[test]
    fn the_best_candidates_come_best_first_and_the_first_is_normalizes_top() {
        let r = rooms(&[Some(50), None, Some(70), Some(60), Some(70)]);
        let ties = |i: usize| [0, 0, 5, 0, 3][i];
        assert_eq!(
            best(r.iter().copied(), Placement::Spread, ties, 3),
            [4, 2, 3]
        );
        assert_eq!(best(r.iter().copied(), Placement::Binpack, ties, 2), [0, 3]);
        // Never a candidate that does not fit, however many are asked for.
        assert_eq!(
            best(r.iter().copied(), Placement::Spread, ties, 9),
            [4, 2, 3, 0]
        );
        assert_eq!(
            best(r.iter().copied(), Placement::Spread, ties, 0),
            [] as [usize; 0]
        );
        assert_eq!(
            best(rooms(&[None]), Placement::Spread, ties, 1),
            [] as [usize; 0]
        );
    }

    #[test]
    fn the_best_agree_with_normalize_and_with_a_full_sort() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d_u64);
        for _ in 0..2000 {
            let n = 1 + (next() % 40) as usize;
            // Few distinct shares, so that ties are common; some equal tiebreaks too.
            let r: Vec<Option<(u128, u128)>> = (0..n)
                .map(|_| (!next().is_multiple_of(5)).then(|| (u128::from(next() % 4), 4)))
                .collect();
            let ties: Vec<u64> = (0..n).map(|_| next() % 8).collect();
            for placement in [Placement::Spread, Placement::Binpack] {
                let (_, top) = normalize(r.iter().copied(), placement, |i| ties[i]);
                let k = usize::try_from(next() % (n as u64 + 2)).unwrap_or(0);
                let got = best(r.iter().copied(), placement, |i| ties[i], k);
                if k > 0 {
                    assert_eq!(got.first().copied(), top, "{r:?} {ties:?}");
                }
                let all = best_by_full_sort(&r, placement, &ties, k);
                assert_eq!(got, all, "{r:?} {ties:?} k={k}");
            }
        }
    }

    /// What [`best`] must return: the fitting candidates fully sorted by its order, cut to `k`.
    fn best_by_full_sort(
        r: &[Option<(u128, u128)>],
        placement: Placement,
        ties: &[u64],
        k: usize,
    ) -> Vec<usize> {
        let mut all: Vec<usize> = (0..r.len())
            .filter(|&i| preference(r[i], placement).is_some())
            .collect();
        let key = |i: usize| {
            let v = preference(r[i], placement).unwrap_or_default();
            (std::cmp::Reverse(v), ties[i], i)
        };
        all.sort_by_key(|&i| key(i));
        all.truncate(k);
        all
    }

    #[test]
    fn the_best_few_of_many_agree_with_a_full_sort() {
        // Many candidates and a small k, so the kept ones are cut back again and again and
        // most candidates are passed over by `below`: pool-sized rooms, rooms with the same
        // share at different sizes, full and empty pools, and ties.
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15_u64);
        for round in 0..400 {
            let n = 1 + (next() % 600) as usize;
            let r: Vec<Option<(u128, u128)>> = (0..n)
                .map(|_| {
                    let whole = u128::from(1 + next() % (1 << 45));
                    match next() % 8 {
                        0 => None,
                        1 => Some((0, whole)),
                        2 => Some((whole, whole)),
                        3 => Some((0, 0)),
                        4 => {
                            let m = u128::from(1 + next() % 1000);
                            Some((u128::from(next() % 4) * m, 4 * m))
                        }
                        _ => Some((u128::from(next()) % (whole + 1), whole)),
                    }
                })
                .collect();
            let ties: Vec<u64> = (0..n).map(|_| next() % 4).collect();
            let k = 1 + (next() % 30) as usize;
            for placement in [Placement::Spread, Placement::Binpack] {
                let got = best(r.iter().copied(), placement, |i| ties[i], k);
                let want = best_by_full_sort(&r, placement, &ties, k);
                assert_eq!(got, want, "round {round}, n={n}, k={k}, {placement:?}");
            }
        }
    }

    #[test]
    fn below_compares_exactly_as_the_divided_share() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d_u64);
        let check = |left: u128, whole: u128, floor: u64| {
            for placement in [Placement::Spread, Placement::Binpack] {
                let divided = preference(Some((left, whole)), placement);
                // Past 64 bits the share is left to division.
                let want = whole <= u128::from(u64::MAX) && divided.is_some_and(|p| p < floor);
                assert_eq!(
                    below(left, whole, floor, placement),
                    want,
                    "left={left} whole={whole} floor={floor} {placement:?}"
                );
            }
        };
        for whole in 0..=12 {
            for left in 0..=14 {
                for floor in (0..=16).map(|f| f << 28).chain([1, (1 << 32) - 1]) {
                    check(left, whole, floor);
                    check(left, whole, floor + 1);
                }
            }
        }
        for _ in 0..100_000 {
            let whole = u128::from(next()) << (next() % 7);
            let left = u128::from(next()) % (whole + 2);
            // A floor at the candidate's own preference, or one away from it, half the time.
            let floor = match (
                next() % 4,
                preference(Some((left, whole)), Placement::Spread),
            ) {
                (0, Some(p)) => p,
                (1, Some(p)) => p + 1,
                (2, Some(p)) => (1u64 << 32) - p,
                _ => next() % ((1 << 32) + 1),
            };
            check(left, whole, floor);
        }
        // The largest rooms compared, and rooms past 64 bits, which are not.
        let max = u128::from(u64::MAX);
        check(max, max, 1 << 32);
        check(max - 1, max, (1 << 32) - 1);
        check(u128::MAX, max, 1 << 32);
        assert!(!below(0, max + 1, 1, Placement::Spread));
        assert!(!below(max + 1, max + 1, 1 << 32, Placement::Binpack));
    }

    #[test]
    fn placement_parses_by_name_only() {
        assert_eq!("spread".parse(), Ok(Placement::Spread));
        assert_eq!("binpack".parse(), Ok(Placement::Binpack));
        assert!("Spread".parse::<Placement>().is_err());
    }
}
