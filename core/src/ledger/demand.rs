//! A pod's storage demand: the bytes its unbound claims need, summed per pool.
//!
//! A pod's claims all land on the node the pod runs on, so the fit check must look at the
//! pod's whole demand at once: two 60 GiB claims do not fit a pool with 100 GiB free even
//! though each alone would (open-local #158 is this bug).

use super::{Bytes, PoolName};

/// Bytes needed per pool. Pools are kept sorted by name and each appears once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Demand {
    per_pool: Vec<(PoolName, Bytes)>,
}

/// The demand's total would not fit in 64 bits.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the claims of this pod ask for more than 16Ei in pool {pool}; reduce the requested sizes")]
pub struct DemandOverflow {
    /// The pool whose total overflowed.
    pub pool: PoolName,
}

impl Demand {
    /// No demand at all.
    #[inline]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sums `(pool, bytes)` pairs, one per claim.
    ///
    /// ```
    /// use stowage_core::ledger::{Bytes, Demand};
    /// let d = Demand::from_claims([("ssd", Bytes::gib(10)), ("hdd", Bytes::gib(5)), ("ssd", Bytes::gib(1))]).unwrap();
    /// assert_eq!(d.get("ssd"), Bytes::gib(11));
    /// assert_eq!(d.pools().count(), 2);
    /// ```
    #[inline]
    pub fn from_claims<P: Into<PoolName>>(
        claims: impl IntoIterator<Item = (P, Bytes)>,
    ) -> Result<Self, DemandOverflow> {
        let mut d = Demand::new();
        for (pool, bytes) in claims {
            d.add(pool.into(), bytes)?;
        }
        Ok(d)
    }

    /// Adds one claim's bytes to `pool`.
    #[inline]
    pub fn add(&mut self, pool: PoolName, bytes: Bytes) -> Result<(), DemandOverflow> {
        match self.per_pool.binary_search_by(|(p, _)| p.cmp(&pool)) {
            Ok(i) => {
                let total = &mut self.per_pool[i].1;
                *total = total.checked_add(bytes).ok_or(DemandOverflow { pool })?;
            }
            Err(i) => self.per_pool.insert(i, (pool, bytes)),
        }
        Ok(())
    }

    /// Bytes needed in `pool` (zero when the pool is not asked for).
    #[inline]
    pub fn get(&self, pool: &str) -> Bytes {
        self.per_pool
            .iter()
            .find(|(p, _)| p.as_str() == pool)
            .map_or(Bytes::ZERO, |(_, b)| *b)
    }

    /// `(pool, bytes)` pairs, sorted by pool name.
    #[inline]
    pub fn pools(&self) -> impl Iterator<Item = (&PoolName, Bytes)> {
        self.per_pool.iter().map(|(p, b)| (p, *b))
    }

    /// Whether the demand asks for no pool at all.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.per_pool.is_empty()
    }

    /// Sum over all pools (saturating; only for reporting).
    #[inline]
    pub fn total(&self) -> Bytes {
        self.per_pool
            .iter()
            .fold(Bytes::ZERO, |acc, (_, b)| acc.saturating_add(*b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_in_the_same_pool_are_summed() {
        let d = Demand::from_claims([
            ("default", Bytes::gib(60)),
            ("default", Bytes::gib(60)),
            ("fast", Bytes::gib(1)),
        ])
        .unwrap();
        assert_eq!(d.get("default"), Bytes::gib(120));
        assert_eq!(d.get("fast"), Bytes::gib(1));
        assert_eq!(d.get("other"), Bytes::ZERO);
        assert_eq!(d.total(), Bytes::gib(121));
        let names: Vec<_> = d.pools().map(|(p, _)| p.as_str().to_string()).collect();
        assert_eq!(names, ["default", "fast"]);
    }

    #[test]
    fn a_demand_that_overflows_is_an_error_not_a_wrap() {
        let err = Demand::from_claims([("p", Bytes(u64::MAX)), ("p", Bytes(1))]).unwrap_err();
        assert_eq!(err.pool.as_str(), "p");
    }
}
