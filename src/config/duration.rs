//! Durations written as `"300ms"`, `"5s"`, `"1m"`, `"1h30m"`, `"2d"` in TOML.
//! Units are required, and only milliseconds to days exist: `"5 M"` (months
//! in some parsers) and `"100 years"` are errors, not surprises.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A duration in human form. Plain integers are rejected on purpose: is `5`
/// seconds or milliseconds? Say `"5s"`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl fmt::Debug for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Dur {
    pub fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    pub fn millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
}

impl From<Dur> for Duration {
    fn from(d: Dur) -> Duration {
        d.0
    }
}

/// Why a duration string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurError {
    #[error("invalid duration \"\": empty")]
    Empty,
    #[error("invalid duration {0:?}: no unit (write e.g. \"5s\" or \"300ms\")")]
    NoUnit(String),
    #[error("invalid duration {text:?}: unknown unit {unit:?} (use ms, s, m, h or d; months, weeks and years are not accepted)")]
    Unit { unit: String, text: String },
    #[error("invalid duration {0:?} (expected e.g. \"300ms\", \"5s\", \"1m\", \"1h30m\")")]
    Syntax(String),
    #[error("invalid duration {0:?}: too long")]
    Overflow(String),
}

fn unit_millis(u: &str) -> Option<u64> {
    Some(match u {
        "ms" | "msec" | "millis" => 1,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        _ => return None,
    })
}

/// Parses `"<n><unit>"` terms, optionally separated by spaces: `"1h 30m"`.
pub fn parse(text: &str) -> Result<Duration, DurError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(DurError::Empty);
    }
    let mut total: u64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(DurError::Syntax(text.to_string()));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| DurError::Overflow(text.to_string()))?;
        rest = rest[digits..].trim_start();
        let ulen = rest.len()
            - rest
                .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                .len();
        if ulen == 0 {
            return Err(if rest.is_empty() {
                DurError::NoUnit(text.to_string())
            } else {
                DurError::Syntax(text.to_string())
            });
        }
        let unit = &rest[..ulen];
        let per = unit_millis(unit).ok_or_else(|| DurError::Unit {
            unit: unit.to_string(),
            text: text.to_string(),
        })?;
        total = n
            .checked_mul(per)
            .and_then(|x| total.checked_add(x))
            .ok_or_else(|| DurError::Overflow(text.to_string()))?;
        rest = rest[ulen..].trim_start();
    }
    Ok(Duration::from_millis(total))
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map(Dur).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_to_days_with_units() {
        assert_eq!(parse("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse(" 1h 30m "), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("2 days"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn months_years_and_unitless_are_rejected() {
        assert!(matches!(parse("5 M"), Err(DurError::Unit { .. })));
        assert!(matches!(parse("100 years"), Err(DurError::Unit { .. })));
        assert!(matches!(parse("2w"), Err(DurError::Unit { .. })));
        assert!(matches!(parse("5"), Err(DurError::NoUnit(_))));
        assert!(matches!(parse("s"), Err(DurError::Syntax(_))));
        assert!(matches!(parse("1.5s"), Err(DurError::Syntax(_))));
        assert!(matches!(parse(""), Err(DurError::Empty)));
        assert!(matches!(
            parse("99999999999999999999s"),
            Err(DurError::Overflow(_))
        ));
    }

    #[test]
    fn display_round_trips_through_parse() {
        for d in [Dur::millis(20), Dur::secs(90), Dur::secs(86_400 + 61)] {
            assert_eq!(parse(&d.to_string()), Ok(d.0), "{d}");
        }
    }
}
