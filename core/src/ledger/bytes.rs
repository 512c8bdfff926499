//! Byte counts and the Kubernetes quantity notation for them.
//!
//! Every size in the ledger is a [`Bytes`]. Arithmetic is checked or saturating, never
//! wrapping: an overflow in capacity arithmetic would be an overcommit.

use std::fmt;
use std::str::FromStr;

/// A number of bytes.
///
/// ```
/// use stowage_core::ledger::Bytes;
/// let b: Bytes = "1.5Gi".parse().unwrap();
/// assert_eq!(b, Bytes(1_610_612_736));
/// assert_eq!(b.to_string(), "1.5Gi");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(pub u64);

/// The largest size stowage accepts anywhere: 8 EiB, half of `u64`, so that sums of a few
/// such values still cannot overflow before the checked arithmetic rejects them.
pub const MAX_BYTES: Bytes = Bytes(1 << 63);

impl Bytes {
    /// Zero bytes.
    pub const ZERO: Bytes = Bytes(0);
    /// One kibibyte.
    pub const KI: u64 = 1 << 10;
    /// One mebibyte.
    pub const MI: u64 = 1 << 20;
    /// One gibibyte.
    pub const GI: u64 = 1 << 30;
    /// One tebibyte.
    pub const TI: u64 = 1 << 40;

    /// `n` gibibytes (saturating).
    #[inline]
    pub const fn gib(n: u64) -> Bytes {
        Bytes(n.saturating_mul(Self::GI))
    }

    /// `n` mebibytes (saturating).
    #[inline]
    pub const fn mib(n: u64) -> Bytes {
        Bytes(n.saturating_mul(Self::MI))
    }

    /// `n` tebibytes (saturating).
    #[inline]
    pub const fn tib(n: u64) -> Bytes {
        Bytes(n.saturating_mul(Self::TI))
    }

    /// `self + rhs`, or `None` on overflow.
    #[inline]
    pub const fn checked_add(self, rhs: Bytes) -> Option<Bytes> {
        match self.0.checked_add(rhs.0) {
            Some(v) => Some(Bytes(v)),
            None => None,
        }
    }

    /// `self - rhs`, or `None` when `rhs` is larger.
    #[inline]
    pub const fn checked_sub(self, rhs: Bytes) -> Option<Bytes> {
        match self.0.checked_sub(rhs.0) {
            Some(v) => Some(Bytes(v)),
            None => None,
        }
    }

    /// `self + rhs`, clamped at `u64::MAX`.
    #[inline]
    pub const fn saturating_add(self, rhs: Bytes) -> Bytes {
        Bytes(self.0.saturating_add(rhs.0))
    }

    /// `self - rhs`, clamped at zero.
    #[inline]
    pub const fn saturating_sub(self, rhs: Bytes) -> Bytes {
        Bytes(self.0.saturating_sub(rhs.0))
    }

    /// `self / whole` as a fraction in `0.0..=1.0` (1.0 when `whole` is zero and `self` is
    /// not, 0.0 when both are zero). Only for reporting and scoring, never for fit decisions.
    #[allow(clippy::cast_precision_loss)]
    #[inline]
    pub fn ratio(self, whole: Bytes) -> f64 {
        if whole.0 == 0 {
            return if self.0 == 0 { 0.0 } else { 1.0 };
        }
        (self.0 as f64 / whole.0 as f64).min(1.0)
    }
}

impl fmt::Display for Bytes {
    /// Binary units, exact where the value is a whole number of the unit (`20Gi`), otherwise
    /// one decimal (`19.9Gi`), so that reasons read like the quantities users wrote.
    #[allow(clippy::cast_precision_loss)]
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 6] = [
            ("Ei", 1 << 60),
            ("Pi", 1 << 50),
            ("Ti", 1 << 40),
            ("Gi", 1 << 30),
            ("Mi", 1 << 20),
            ("Ki", 1 << 10),
        ];
        for (suffix, unit) in UNITS {
            if self.0 >= unit {
                if self.0.is_multiple_of(unit) {
                    return write!(f, "{}{suffix}", self.0 / unit);
                }
                let tenths = (self.0 as f64 / unit as f64 * 10.0).round() / 10.0;
                if tenths.fract() == 0.0 {
                    return write!(f, "{tenths:.0}{suffix}");
                }
                return write!(f, "{tenths:.1}{suffix}");
            }
        }
        write!(f, "{}", self.0)
    }
}

/// Why a quantity could not be read as a byte count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Nothing was given.
    #[error("empty quantity; write a size such as 10Gi, 500Mi or 1073741824")]
    Empty,
    /// A minus sign: sizes cannot be negative.
    #[error("quantity {0:?} is negative; sizes must be zero or more")]
    Negative(String),
    /// Not of the form number + optional suffix.
    #[error(
        "quantity {0:?} is not a size; write a number with an optional suffix Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P, E"
    )]
    Malformed(String),
    /// Larger than stowage handles.
    #[error("quantity {0:?} is larger than 8Ei, the largest size stowage accepts")]
    TooLarge(String),
    /// A percentage above 100.
    #[error("{0:?} is more than 100%; a reserve is a share of the pool, at most 100%")]
    PercentTooLarge(String),
}

impl FromStr for Bytes {
    type Err = QuantityError;

    /// Parses the Kubernetes quantity notation (`resource.Quantity`) as a byte count:
    /// binary suffixes `Ki`…`Ei`, decimal suffixes `k`…`E`, `m` (milli), and decimal
    /// exponents (`1e9`). Fractions of a byte round up, as Kubernetes does for storage.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_quantity(s)
    }
}

fn parse_quantity(input: &str) -> Result<Bytes, QuantityError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(QuantityError::Empty);
    }
    let malformed = || QuantityError::Malformed(input.to_string());
    let s = match s.strip_prefix('+') {
        Some(rest) => rest,
        None if s.starts_with('-') => return Err(QuantityError::Negative(input.to_string())),
        None => s,
    };
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    let (int_digits, frac_digits) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if (int_digits.is_empty() && frac_digits.is_empty()) || frac_digits.contains('.') {
        return Err(malformed());
    }
    // Scale as numerator/denominator in u128 so no float ever decides a size.
    let (num, den): (u128, u128) = match suffix {
        "" => (1, 1),
        "Ki" => (1 << 10, 1),
        "Mi" => (1 << 20, 1),
        "Gi" => (1 << 30, 1),
        "Ti" => (1 << 40, 1),
        "Pi" => (1 << 50, 1),
        "Ei" => (1 << 60, 1),
        "m" => (1, 1000),
        "k" => (1_000, 1),
        "M" => (1_000_000, 1),
        "G" => (1_000_000_000, 1),
        "T" => (1_000_000_000_000, 1),
        "P" => (1_000_000_000_000_000, 1),
        "E" => (1_000_000_000_000_000_000, 1),
        exp if exp.starts_with(['e', 'E']) => {
            let digits = exp[1..].strip_prefix('+').unwrap_or(&exp[1..]);
            if let Some(neg) = digits.strip_prefix('-') {
                let e: u32 = neg.parse().map_err(|_| malformed())?;
                (1, 10u128.checked_pow(e).ok_or_else(malformed)?)
            } else {
                let e: u32 = digits.parse().map_err(|_| malformed())?;
                if e > 30 {
                    return Err(QuantityError::TooLarge(input.to_string()));
                }
                (10u128.pow(e), 1)
            }
        }
        _ => return Err(malformed()),
    };
    let too_large = || QuantityError::TooLarge(input.to_string());
    let digits = format!("{int_digits}{frac_digits}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Err(too_large());
    }
    let mantissa: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| malformed())?
    };
    let frac_len = u32::try_from(frac_digits.len()).map_err(|_| malformed())?;
    let den = den
        .checked_mul(10u128.checked_pow(frac_len).ok_or_else(too_large)?)
        .ok_or_else(too_large)?;
    let scaled = mantissa.checked_mul(num).ok_or_else(too_large)?;
    let value = scaled.div_ceil(den);
    let value = u64::try_from(value).map_err(|_| too_large())?;
    if value > MAX_BYTES.0 {
        return Err(too_large());
    }
    Ok(Bytes(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_decimal_and_plain_quantities_parse_exactly() {
        let cases = [
            ("0", 0),
            ("1", 1),
            ("1Ki", 1024),
            ("10Gi", 10 << 30),
            ("1.5Gi", 3 << 29),
            ("2Ti", 2 << 40),
            ("1k", 1000),
            ("5G", 5_000_000_000),
            ("1e3", 1000),
            ("1E3", 1000),
            ("2.5e2", 250),
            ("+7", 7),
            ("1500m", 2),
            ("0.5", 1),
            (" 3Mi ", 3 << 20),
            ("8Ei", 1 << 63),
        ];
        for (input, want) in cases {
            assert_eq!(input.parse::<Bytes>(), Ok(Bytes(want)), "{input}");
        }
    }

    #[test]
    fn negative_malformed_and_enormous_quantities_are_refused_with_the_reason() {
        assert_eq!("".parse::<Bytes>(), Err(QuantityError::Empty));
        assert!(matches!(
            "-1Gi".parse::<Bytes>(),
            Err(QuantityError::Negative(_))
        ));
        for bad in ["Gi", "1.2.3", "10GB", "ten", "1Zi", "1e", "1e-", "."] {
            assert!(
                matches!(bad.parse::<Bytes>(), Err(QuantityError::Malformed(_))),
                "{bad}"
            );
        }
        for huge in ["9Ei", "100000000000000000000000000000000", "1e40", "16E"] {
            assert!(
                matches!(huge.parse::<Bytes>(), Err(QuantityError::TooLarge(_))),
                "{huge}"
            );
        }
    }

    #[test]
    fn display_is_exact_for_whole_units_and_one_decimal_otherwise() {
        assert_eq!(Bytes::gib(20).to_string(), "20Gi");
        assert_eq!(Bytes(1536 << 20).to_string(), "1.5Gi");
        assert_eq!(Bytes(512).to_string(), "512");
        assert_eq!(Bytes(u64::from(u32::MAX)).to_string(), "4Gi");
        assert_eq!(Bytes(0).to_string(), "0");
    }

    #[test]
    fn arithmetic_never_wraps() {
        assert_eq!(Bytes(u64::MAX).checked_add(Bytes(1)), None);
        assert_eq!(Bytes(1).checked_sub(Bytes(2)), None);
        assert_eq!(Bytes(1).saturating_sub(Bytes(2)), Bytes::ZERO);
        assert_eq!(Bytes(u64::MAX).saturating_add(Bytes(2)), Bytes(u64::MAX));
        assert!((Bytes(1).ratio(Bytes(4)) - 0.25).abs() < 1e-12);
        assert!((Bytes(5).ratio(Bytes(0)) - 1.0).abs() < 1e-12);
    }
}
