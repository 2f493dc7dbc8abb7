//! Money is integer micro-USD: no floating point anywhere near a bill.

use serde::{Deserialize, Serialize};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct MicroUsd(pub i64);

impl MicroUsd {
    pub const ZERO: MicroUsd = MicroUsd(0);

    pub fn from_dollars_cents(dollars: i64, cents: i64) -> Self {
        MicroUsd(dollars * 1_000_000 + cents * 10_000)
    }

    /// Parses a non-negative decimal dollar amount with at most six decimals (`"0.0363"`),
    /// exactly: no floating point.
    pub fn parse_dollars(text: &str) -> Option<MicroUsd> {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let (whole, frac) = match text.split_once('.') {
            Some((w, f)) if digits(f) => (w, f),
            Some(_) => return None,
            None => (text, ""),
        };
        if !digits(whole) || frac.len() > 6 {
            return None;
        }
        let whole: i64 = whole.parse().ok()?;
        let frac: i64 = format!("{frac:0<6}").parse().ok()?;
        whole
            .checked_mul(1_000_000)?
            .checked_add(frac)
            .map(MicroUsd)
    }

    pub fn checked_add(self, other: MicroUsd) -> Option<MicroUsd> {
        self.0.checked_add(other.0).map(MicroUsd)
    }

    /// Dollars as a decimal string with six places and no currency sign: `12.345678`, the form
    /// the API writes amounts in.
    pub fn decimal(self) -> String {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        format!("{sign}{}.{:06}", abs / 1_000_000, abs % 1_000_000)
    }
}

impl std::fmt::Display for MicroUsd {
    /// `$12.345678`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.decimal().strip_prefix('-') {
            Some(abs) => write!(f, "-${abs}"),
            None => write!(f, "${}", self.decimal()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_exactly() {
        assert_eq!(
            MicroUsd::from_dollars_cents(12, 34).to_string(),
            "$12.340000"
        );
        assert_eq!(MicroUsd(-1).to_string(), "-$0.000001");
        assert_eq!(MicroUsd(i64::MAX).checked_add(MicroUsd(1)), None);
        assert_eq!(MicroUsd::parse_dollars("0.0363"), Some(MicroUsd(36_300)));
        assert_eq!(MicroUsd::parse_dollars("12"), Some(MicroUsd(12_000_000)));
        assert_eq!(
            MicroUsd::parse_dollars("1.000001"),
            Some(MicroUsd(1_000_001))
        );
        for bad in ["", ".5", "1.", "-1", "1.0000001", "1e3", "0x1"] {
            assert_eq!(MicroUsd::parse_dollars(bad), None, "{bad}");
        }
    }
}
