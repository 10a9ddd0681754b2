//! Resource quantities (`k8s.io/apimachinery/pkg/api/resource`): `100m`, `1Gi`, `2`,
//! `1e3`, `500Mi`, `1.5`. A [`Quantity`] keeps the exact value in nano-units (the
//! finest precision Kubernetes keeps; finer values round up) and the format of its
//! suffix, so it prints back canonically (`1.5` → `1500m`, `1024Mi` → `1Gi`).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// The expression Kubernetes quotes in its format error.
pub const QUANTITY_REGEX: &str = "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$";

/// Why a string is not a quantity. Messages are Kubernetes'.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The string does not have the shape of a quantity.
    #[error("quantities must match the regular expression '{QUANTITY_REGEX}'")]
    FormatWrong,
    /// The number part cannot be read.
    #[error("unable to parse numeric part of quantity")]
    Numeric,
    /// The suffix is unknown.
    #[error("unable to parse quantity's suffix")]
    Suffix,
    /// The value does not fit in rkube's representation (about ±1.7e29).
    #[error("quantity is too large")]
    OutOfRange,
}

/// How a quantity was written, and so how it prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantityFormat {
    /// `Ki`, `Mi`, `Gi`, `Ti`, `Pi`, `Ei`
    BinarySI,
    /// `n`, `u`, `m`, none, `k`, `M`, `G`, `T`, `P`, `E`
    DecimalSI,
    /// `1e3`, `5E-3`
    DecimalExponent,
}

/// A parsed resource quantity.
#[derive(Debug, Clone, Copy)]
pub struct Quantity {
    nanos: i128,
    format: QuantityFormat,
}

const NANO: i128 = 1_000_000_000;

fn div_round_away(n: i128, d: i128) -> i128 {
    let q = n / d;
    if n % d == 0 {
        q
    } else if n < 0 {
        q - 1
    } else {
        q + 1
    }
}

impl Quantity {
    /// Parses a quantity string like Kubernetes' `resource.ParseQuantity`.
    pub fn parse(s: &str) -> Result<Self, QuantityError> {
        if s.is_empty() {
            return Err(QuantityError::FormatWrong);
        }
        let (positive, num, denom, suffix) = split_quantity(s)?;
        let (base, exp, format) = parse_suffix(suffix)?;
        let digits = format!("{num}{denom}");
        let mut mantissa: i128 = digits.parse().map_err(|_| {
            if digits.len() > 30 {
                QuantityError::OutOfRange
            } else {
                QuantityError::Numeric
            }
        })?;
        let scale = denom.len() as i64;
        let nanos = if base == 2 {
            // mantissa * 2^exp * 1e9 / 10^scale
            let pow = 1i128.checked_shl(exp as u32).ok_or(QuantityError::OutOfRange)?;
            mantissa = mantissa
                .checked_mul(pow)
                .and_then(|m| m.checked_mul(NANO))
                .ok_or(QuantityError::OutOfRange)?;
            let div = pow10(scale).ok_or(QuantityError::OutOfRange)?;
            div_round_away(mantissa, div)
        } else {
            let e = exp + 9 - scale;
            if e >= 0 {
                let m = pow10(e).ok_or(QuantityError::OutOfRange)?;
                mantissa.checked_mul(m).ok_or(QuantityError::OutOfRange)?
            } else {
                match pow10(-e) {
                    Some(d) => div_round_away(mantissa, d),
                    None if mantissa == 0 => 0,
                    None => 1,
                }
            }
        };
        Ok(Quantity { nanos: if positive { nanos } else { -nanos }, format })
    }

    /// A quantity of `value` whole units, printed in `format`.
    pub fn from_units(value: i64, format: QuantityFormat) -> Self {
        Quantity { nanos: value as i128 * NANO, format }
    }

    /// A quantity of `millis` thousandths (e.g. millicores), printed in decimal SI.
    pub fn from_millis(millis: i64) -> Self {
        Quantity { nanos: millis as i128 * 1_000_000, format: QuantityFormat::DecimalSI }
    }

    /// The exact value in nano-units (1e-9).
    pub fn nanos(&self) -> i128 {
        self.nanos
    }

    /// The value in thousandths, rounded up (Kubernetes' `MilliValue`): CPU millicores.
    pub fn to_millis(&self) -> i128 {
        div_round_away(self.nanos, 1_000_000)
    }

    /// The value in whole units, rounded up (Kubernetes' `Value`): bytes, counts.
    pub fn to_units(&self) -> i128 {
        div_round_away(self.nanos, NANO)
    }

    /// Same as [`Quantity::to_units`], named for memory and storage.
    pub fn to_bytes(&self) -> i128 {
        self.to_units()
    }

    /// An approximate floating-point value.
    pub fn as_f64(&self) -> f64 {
        self.nanos as f64 / 1e9
    }

    /// The format the quantity prints in.
    pub fn format(&self) -> QuantityFormat {
        self.format
    }

    /// Whether the value is zero.
    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }
}

fn pow10(e: i64) -> Option<i128> {
    if !(0..=38).contains(&e) {
        return None;
    }
    10i128.checked_pow(e as u32)
}

/// Splits into sign, integer digits (leading zeros dropped), fraction digits and suffix.
fn split_quantity(s: &str) -> Result<(bool, &str, &str, &str), QuantityError> {
    let b = s.as_bytes();
    let mut pos = 0;
    let mut positive = true;
    match b.first() {
        Some(b'-') => {
            positive = false;
            pos = 1;
        }
        Some(b'+') => pos = 1,
        _ => {}
    }
    while pos < b.len() && b[pos] == b'0' {
        pos += 1;
    }
    if pos >= b.len() {
        return Ok((positive, "0", "", ""));
    }
    let start = pos;
    while pos < b.len() && b[pos].is_ascii_digit() {
        pos += 1;
    }
    let mut num = &s[start..pos];
    if num.is_empty() {
        num = "0";
    }
    let mut denom = "";
    if pos < b.len() && b[pos] == b'.' {
        pos += 1;
        let ds = pos;
        while pos < b.len() && b[pos].is_ascii_digit() {
            pos += 1;
        }
        denom = &s[ds..pos];
    }
    let suffix_start = pos;
    while pos < b.len() && b"eEinumkKMGTP".contains(&b[pos]) {
        pos += 1;
    }
    if pos < b.len() && matches!(b[pos], b'-' | b'+') {
        pos += 1;
    }
    while pos < b.len() && b[pos].is_ascii_digit() {
        pos += 1;
    }
    if pos < b.len() {
        return Err(QuantityError::FormatWrong);
    }
    let numeric = s[..suffix_start].trim_start_matches(['+', '-']);
    if numeric.is_empty() {
        return Err(QuantityError::FormatWrong);
    }
    if !numeric.bytes().any(|c| c.is_ascii_digit()) {
        return Err(QuantityError::Numeric);
    }
    Ok((positive, num, denom, &s[suffix_start..]))
}

/// Returns (base, exponent, format).
fn parse_suffix(suffix: &str) -> Result<(u32, i64, QuantityFormat), QuantityError> {
    use QuantityFormat::*;
    let r = match suffix {
        "" => (10, 0, DecimalSI),
        "n" => (10, -9, DecimalSI),
        "u" => (10, -6, DecimalSI),
        "m" => (10, -3, DecimalSI),
        "k" => (10, 3, DecimalSI),
        "M" => (10, 6, DecimalSI),
        "G" => (10, 9, DecimalSI),
        "T" => (10, 12, DecimalSI),
        "P" => (10, 15, DecimalSI),
        "E" => (10, 18, DecimalSI),
        "Ki" => (2, 10, BinarySI),
        "Mi" => (2, 20, BinarySI),
        "Gi" => (2, 30, BinarySI),
        "Ti" => (2, 40, BinarySI),
        "Pi" => (2, 50, BinarySI),
        "Ei" => (2, 60, BinarySI),
        _ => {
            let rest = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))
                .ok_or(QuantityError::Suffix)?;
            let e: i64 = rest.parse().map_err(|_| QuantityError::Suffix)?;
            (10, e, DecimalExponent)
        }
    };
    Ok(r)
}

fn decimal_suffix(exp: i64) -> &'static str {
    match exp {
        -9 => "n",
        -6 => "u",
        -3 => "m",
        3 => "k",
        6 => "M",
        9 => "G",
        12 => "T",
        15 => "P",
        18 => "E",
        _ => "",
    }
}

impl fmt::Display for Quantity {
    /// The canonical form, as Kubernetes prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos == 0 {
            return f.write_str("0");
        }
        if self.format == QuantityFormat::BinarySI
            && self.nanos % NANO == 0
            && self.nanos.abs() >= 1024 * NANO
        {
            let v = self.nanos / NANO;
            for (e, sfx) in [(60, "Ei"), (50, "Pi"), (40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")] {
                let p = 1i128 << e;
                if v % p == 0 {
                    return write!(f, "{}{}", v / p, sfx);
                }
            }
            return write!(f, "{v}");
        }
        let max_exp = if self.format == QuantityFormat::DecimalExponent { 27 } else { 18 };
        let mut exp = max_exp;
        while exp > -9 {
            if let Some(p) = pow10(exp + 9) {
                if self.nanos % p == 0 {
                    break;
                }
            }
            exp -= 3;
        }
        let p = pow10(exp + 9).unwrap_or(1);
        let m = self.nanos / p;
        if self.format == QuantityFormat::DecimalExponent {
            if exp == 0 {
                write!(f, "{m}")
            } else {
                write!(f, "{m}e{exp}")
            }
        } else {
            write!(f, "{m}{}", decimal_suffix(exp))
        }
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quantity::parse(s)
    }
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}

impl Eq for Quantity {}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

impl std::ops::Add for Quantity {
    type Output = Quantity;
    fn add(self, rhs: Self) -> Quantity {
        Quantity { nanos: self.nanos.saturating_add(rhs.nanos), format: self.format }
    }
}

impl std::ops::Sub for Quantity {
    type Output = Quantity;
    fn sub(self, rhs: Self) -> Quantity {
        Quantity { nanos: self.nanos.saturating_sub(rhs.nanos), format: self.format }
    }
}

impl serde::Serialize for Quantity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        let s = match &v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            other => {
                return Err(serde::de::Error::custom(format!(
                    "a quantity must be a string or a number, got {other}"
                )))
            }
        };
        Quantity::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn values() {
        assert_eq!(q("100m").to_millis(), 100);
        assert_eq!(q("1").to_millis(), 1000);
        assert_eq!(q("1.5").to_millis(), 1500);
        assert_eq!(q("2").to_units(), 2);
        assert_eq!(q("1Gi").to_bytes(), 1 << 30);
        assert_eq!(q("500Mi").to_bytes(), 500 << 20);
        assert_eq!(q("1e3").to_units(), 1000);
        assert_eq!(q("1E-3").to_millis(), 1);
        assert_eq!(q("1k").to_units(), 1000);
        assert_eq!(q("1.5Gi").to_bytes(), 3 << 29);
        assert_eq!(q("-100m").to_millis(), -100);
        assert_eq!(q("0.1m").to_millis(), 1, "rounds up");
        assert_eq!(q("1n").nanos(), 1);
        assert_eq!(q("+5").to_units(), 5);
        assert_eq!(q(".5").to_millis(), 500);
        assert_eq!(q("0").to_units(), 0);
        assert_eq!(q("000").to_units(), 0);
        assert!(q("1Gi") > q("1G"));
        assert_eq!(q("1000m"), q("1"));
    }

    #[test]
    fn errors() {
        for bad in ["", "abc", "1.2.3", "1Zi", "1 Gi", "--1", "1e", "1ee3", "Gi", ".", "1i"] {
            assert!(Quantity::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Quantity::parse("1Zi").err(), Some(QuantityError::FormatWrong));
        assert_eq!(Quantity::parse("1kk").err(), Some(QuantityError::Suffix));
        assert_eq!(
            QuantityError::FormatWrong.to_string(),
            "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        );
    }

    #[test]
    fn canonical() {
        for (input, want) in [
            ("100m", "100m"),
            ("1.5", "1500m"),
            ("1000", "1k"),
            ("1500", "1500"),
            ("1024Mi", "1Gi"),
            ("1536Mi", "1536Mi"),
            ("0.5Gi", "512Mi"),
            ("1Ki", "1Ki"),
            ("1e3", "1e3"),
            ("1500e0", "1500"),
            ("0", "0"),
            ("-2k", "-2k"),
            ("128974848", "128974848"),
            ("0.1", "100m"),
        ] {
            assert_eq!(q(input).to_string(), want, "{input}");
        }
        let v: Quantity = serde_json::from_str("\"2Gi\"").unwrap_or_else(|_| q("0"));
        assert_eq!(serde_json::to_string(&v).unwrap_or_default(), "\"2Gi\"");
    }
}
