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

    /// Dollars from a JSON number's own text — `250`, `0.000001`, `1e-6`, `2.5E2` — exactly,
    /// never through a float. `None` for a negative number, more than six decimals, or a
    /// number too large for micro-dollars in an `i64`.
    pub fn parse_json_number(text: &str) -> Option<MicroUsd> {
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        let (mantissa, exponent) = match text.find(['e', 'E']) {
            Some(i) => (&text[..i], text[i + 1..].parse::<i64>().ok()?),
            None => (text, 0),
        };
        let (whole, frac) = match mantissa.split_once('.') {
            Some((w, f)) if !f.is_empty() => (w, f),
            Some(_) => return None,
            None => (mantissa, ""),
        };
        if whole.is_empty() || !digits(whole) || !digits(frac) || !(-64..=64).contains(&exponent) {
            return None;
        }
        // The number is 0.<all digits> × 10^point; in micro-dollars the point moves six places.
        let all = format!("{whole}{frac}");
        let point = i64::try_from(whole.len()).ok()? + exponent + 6;
        let point = usize::try_from(point).unwrap_or(0);
        let (int, rest) = if point >= all.len() {
            (format!("{all}{}", "0".repeat(point - all.len())), "")
        } else {
            (all[..point].to_string(), &all[point..])
        };
        if rest.bytes().any(|b| b != b'0') {
            return None;
        }
        let int = int.trim_start_matches('0');
        if int.is_empty() {
            return Some(MicroUsd(0));
        }
        int.parse::<i64>().ok().map(MicroUsd)
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

impl MicroUsd {
    /// Dollars to the cent (half a cent rounds away from zero), thousands grouped: `$1,234.57`.
    pub fn cents(self) -> String {
        let sign = if self.0 < 0 { "-" } else { "" };
        let cents = self.0.unsigned_abs().saturating_add(5_000) / 10_000;
        let dollars = (cents / 100).to_string();
        let mut grouped = String::new();
        for (i, ch) in dollars.chars().enumerate() {
            if i > 0 && (dollars.len() - i).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(ch);
        }
        format!("{sign}${grouped}.{:02}", cents % 100)
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
    fn cents_round_and_group() {
        assert_eq!(MicroUsd(1_234_565_000).cents(), "$1,234.57");
        assert_eq!(MicroUsd(4_999).cents(), "$0.00");
        assert_eq!(MicroUsd(5_000).cents(), "$0.01");
        assert_eq!(MicroUsd(-123_456_789_000_000).cents(), "-$123,456,789.00");
        assert_eq!(MicroUsd(999_995_000).cents(), "$1,000.00");
    }

    #[test]
    fn json_numbers_are_read_from_their_text() {
        let p = MicroUsd::parse_json_number;
        assert_eq!(p("0.000001"), Some(MicroUsd(1)));
        assert_eq!(p("1e-6"), Some(MicroUsd(1)));
        assert_eq!(p("1E-6"), Some(MicroUsd(1)));
        assert_eq!(p("250"), Some(MicroUsd(250_000_000)));
        assert_eq!(p("2.5e2"), Some(MicroUsd(250_000_000)));
        assert_eq!(p("0.1"), Some(MicroUsd(100_000)));
        assert_eq!(p("0.30000000"), Some(MicroUsd(300_000)));
        assert_eq!(p("0"), Some(MicroUsd(0)));
        assert_eq!(p("0e-99"), None, "exponents are bounded");
        // 9,223,372,036,854.775807 dollars is the largest.
        assert_eq!(p("9223372036854.775807"), Some(MicroUsd(i64::MAX)));
        for bad in [
            "1e-7",
            "0.0000001",
            "-1",
            "9223372036854.775808",
            "1e30",
            "1.",
            ".5",
            "",
            "1e",
            "0x10",
            "1e+999999999999",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

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
