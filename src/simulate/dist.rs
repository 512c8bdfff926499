//! Seeded randomness and the size distributions the simulator draws from.
//!
//! The generator is written out here (SplitMix64 seeding xoshiro256**) rather than taken
//! from a crate, so that `--seed N` gives the same run on every build and platform forever.

use std::fmt;
use std::str::FromStr;

use crate::ledger::Bytes;

/// xoshiro256** seeded through SplitMix64.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator whose whole output is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self {
            s: [next(), next(), next(), next()],
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n` (`n > 0`), without modulo bias worth speaking of (Lemire's method).
    pub fn below(&mut self, n: u64) -> u64 {
        let wide = u128::from(self.next_u64()) * u128::from(n);
        u64::try_from(wide >> 64).unwrap_or(0)
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        match (hi - lo).checked_add(1) {
            Some(span) => lo + self.below(span),
            None => self.next_u64(),
        }
    }

    /// Uniform in `[0, 1)`.
    #[allow(clippy::cast_precision_loss)]
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit(); // (0, 1]
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// A distribution of sizes, written on the command line as:
///
/// | form | meaning |
/// |---|---|
/// | `20Gi` | always 20 GiB |
/// | `uniform:10Gi..100Gi` | uniform between the two, inclusive |
/// | `choice:500Gi,1Ti,2Ti` | one of the list, equally likely |
/// | `lognormal:10Gi,1.0` | log-normal with median 10 GiB and σ 1.0 (a heavy tail) |
/// | `lognormal:10Gi,1.0,500Gi` | the same, capped at 500 GiB |
#[derive(Clone, Debug, PartialEq)]
pub enum SizeDist {
    /// One size.
    Fixed(Bytes),
    /// Uniform between `lo` and `hi` inclusive.
    Uniform {
        /// Smallest size.
        lo: Bytes,
        /// Largest size.
        hi: Bytes,
    },
    /// One of a list.
    Choice(Vec<Bytes>),
    /// `median × e^(σ·N(0,1))`, capped.
    LogNormal {
        /// Median size.
        median: Bytes,
        /// Standard deviation of the logarithm.
        sigma: f64,
        /// Upper bound.
        max: Option<Bytes>,
    },
}

/// Samples are rounded up to whole MiB, as people write claim sizes.
const GRAIN: u64 = Bytes::MI;

impl SizeDist {
    /// Draws one size.
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    pub fn sample(&self, rng: &mut Rng) -> Bytes {
        let raw = match self {
            SizeDist::Fixed(b) => return *b,
            SizeDist::Uniform { lo, hi } => Bytes(rng.between(lo.0, hi.0)),
            SizeDist::Choice(list) => {
                let i = usize::try_from(rng.below(list.len() as u64)).unwrap_or(0);
                return list.get(i).copied().unwrap_or_default();
            }
            SizeDist::LogNormal { median, sigma, max } => {
                let v = median.0 as f64 * (sigma * rng.normal()).exp();
                // `as` saturates for floats out of range, which is what a cap wants.
                let b = Bytes(v.max(1.0) as u64);
                max.map_or(b, |m| b.min(m))
            }
        };
        Bytes(raw.0.div_ceil(GRAIN).saturating_mul(GRAIN)).min(self.upper())
    }

    fn upper(&self) -> Bytes {
        match self {
            SizeDist::Fixed(b) => *b,
            SizeDist::Uniform { hi, .. } => *hi,
            SizeDist::Choice(list) => list.iter().copied().max().unwrap_or_default(),
            SizeDist::LogNormal { max, .. } => max.unwrap_or(crate::ledger::MAX_BYTES),
        }
        .max(Bytes(GRAIN))
    }
}

impl fmt::Display for SizeDist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeDist::Fixed(b) => write!(f, "{b}"),
            SizeDist::Uniform { lo, hi } => write!(f, "uniform:{lo}..{hi}"),
            SizeDist::Choice(list) => {
                f.write_str("choice:")?;
                for (i, b) in list.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{b}")?;
                }
                Ok(())
            }
            SizeDist::LogNormal { median, sigma, max } => {
                write!(f, "lognormal:{median},{sigma}")?;
                match max {
                    Some(m) => write!(f, ",{m}"),
                    None => Ok(()),
                }
            }
        }
    }
}

impl FromStr for SizeDist {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let size = |q: &str| {
            q.parse::<Bytes>()
                .map_err(|e| format!("in distribution {s:?}: {e}"))
        };
        let Some((kind, rest)) = s.split_once(':') else {
            return Ok(SizeDist::Fixed(size(s)?));
        };
        match kind {
            "uniform" => {
                let (lo, hi) = rest.split_once("..").ok_or_else(|| {
                    format!("{s:?}: write uniform:MIN..MAX, e.g. uniform:1Gi..50Gi")
                })?;
                let (lo, hi) = (size(lo)?, size(hi)?);
                if lo > hi {
                    return Err(format!("{s:?}: the minimum {lo} is above the maximum {hi}"));
                }
                Ok(SizeDist::Uniform { lo, hi })
            }
            "choice" => {
                let list = rest.split(',').map(size).collect::<Result<Vec<_>, _>>()?;
                Ok(SizeDist::Choice(list))
            }
            "lognormal" => {
                let parts: Vec<&str> = rest.split(',').collect();
                let usage = || {
                    format!(
                        "{s:?}: write lognormal:MEDIAN,SIGMA[,MAX], e.g. lognormal:10Gi,1.0,500Gi"
                    )
                };
                if !(2..=3).contains(&parts.len()) {
                    return Err(usage());
                }
                let median = size(parts[0])?;
                let sigma: f64 = parts[1].trim().parse().map_err(|_| usage())?;
                if !(0.0..=10.0).contains(&sigma) {
                    return Err(format!("{s:?}: sigma must be between 0 and 10"));
                }
                let max = parts.get(2).map(|m| size(m)).transpose()?;
                Ok(SizeDist::LogNormal { median, sigma, max })
            }
            other => Err(format!(
                "unknown distribution {other:?} in {s:?}; use SIZE, uniform:MIN..MAX, choice:A,B,.. or lognormal:MEDIAN,SIGMA[,MAX]"
            )),
        }
    }
}

/// An inclusive range of counts, written `2` or `1..3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CountRange {
    /// Smallest count.
    pub lo: u64,
    /// Largest count.
    pub hi: u64,
}

impl CountRange {
    /// Draws one count.
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        rng.between(self.lo, self.hi)
    }
}

impl fmt::Display for CountRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}..{}", self.lo, self.hi)
        }
    }
}

impl FromStr for CountRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let num = |t: &str| {
            t.trim()
                .parse::<u64>()
                .map_err(|_| format!("{s:?} is not a count or a range like 1..3"))
        };
        let (lo, hi) = match s.split_once("..") {
            Some((lo, hi)) => (num(lo)?, num(hi)?),
            None => (num(s)?, num(s)?),
        };
        if lo == 0 || lo > hi || hi > 64 {
            return Err(format!("{s:?}: counts must satisfy 1 <= MIN <= MAX <= 64"));
        }
        Ok(CountRange { lo, hi })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_stream() {
        let a: Vec<u64> = {
            let mut r = Rng::new(7);
            (0..5).map(|_| r.next_u64()).collect()
        };
        let mut r = Rng::new(7);
        let b: Vec<u64> = (0..5).map(|_| r.next_u64()).collect();
        assert_eq!(a, b);
        assert_ne!(a, {
            let mut r = Rng::new(8);
            (0..5).map(|_| r.next_u64()).collect::<Vec<_>>()
        });
    }

    #[test]
    fn draws_stay_in_their_bounds() {
        let mut r = Rng::new(1);
        for _ in 0..10_000 {
            assert!(r.below(7) < 7);
            let v = r.between(3, 5);
            assert!((3..=5).contains(&v));
            let u = r.unit();
            assert!((0.0..1.0).contains(&u));
        }
        let d: SizeDist = "lognormal:10Gi,2.0,50Gi".parse().unwrap();
        let u: SizeDist = "uniform:1Gi..2Gi".parse().unwrap();
        for _ in 0..10_000 {
            let s = d.sample(&mut r);
            assert!(s <= Bytes::gib(50) && s >= Bytes::mib(1), "{s}");
            assert_eq!(s.0 % Bytes::MI, 0);
            let s = u.sample(&mut r);
            assert!(s >= Bytes::gib(1) && s <= Bytes::gib(2));
        }
    }

    #[test]
    fn lognormal_has_roughly_its_median() {
        let d: SizeDist = "lognormal:10Gi,1.0".parse().unwrap();
        let mut r = Rng::new(3);
        let mut v: Vec<Bytes> = (0..20_001).map(|_| d.sample(&mut r)).collect();
        v.sort();
        let median = v[10_000];
        assert!(
            median > Bytes::gib(9) && median < Bytes::gib(11),
            "{median}"
        );
    }

    #[test]
    fn distributions_parse_and_print_back() {
        for s in [
            "20Gi",
            "uniform:1Gi..50Gi",
            "choice:500Gi,1Ti,2Ti",
            "lognormal:10Gi,1,500Gi",
        ] {
            let d: SizeDist = s.parse().unwrap();
            assert_eq!(d.to_string(), s);
        }
        for bad in [
            "uniform:5Gi..1Gi",
            "uniform:1Gi",
            "choice:1Gi,-2Gi",
            "lognormal:10Gi",
            "lognormal:10Gi,x",
            "lognormal:10Gi,-1",
            "zipf:1",
            "-1Gi",
        ] {
            assert!(bad.parse::<SizeDist>().is_err(), "{bad}");
        }
        assert_eq!("1..3".parse(), Ok(CountRange { lo: 1, hi: 3 }));
        assert_eq!("2".parse(), Ok(CountRange { lo: 2, hi: 2 }));
        for bad in ["0", "3..1", "a", "1..100", "-1"] {
            assert!(bad.parse::<CountRange>().is_err(), "{bad}");
        }
    }
}
