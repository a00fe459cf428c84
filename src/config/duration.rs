//! Human-readable durations for the config file ("250ms", "15s", "5m", "1h").
//!
//! Operators read the YAML more often than they write it; a bare integer with a unit
//! hidden in the key name (`timeout_ms: 250`) is a classic source of off-by-1000 outages.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A `std::time::Duration` that (de)serializes as a string with a unit suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    /// `ms` milliseconds; `const` so it can appear in defaults and statics.
    pub const fn ms(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
    /// `s` whole seconds; `const` so it can appear in defaults and statics.
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
}

/// Why a duration was not accepted (the text is quoted back to the operator).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DurationError {
    /// Only a number (other than `0`) was given; holds the trimmed text.
    #[error("`{0}` has no unit; write e.g. `250ms`, `15s`, `5m` or `1h`")]
    NoUnit(String),
    /// The text before the unit is not a number (e.g. `ms` alone or `1..5s`).
    #[error("`{0}` does not start with a number")]
    NotANumber(String),
    /// The suffix is not `ms`, `s`, `m` or `h`.
    #[error("unknown unit `{unit}` in `{text}`; accepted units: ms, s, m, h")]
    UnknownUnit {
        /// The suffix as written, e.g. `d`.
        unit: String,
        /// The whole trimmed text, e.g. `15d`.
        text: String,
    },
    /// Longer than 365 days (or too large for an f64); holds the trimmed text.
    #[error("`{0}` is out of range (0 to 365 days)")]
    OutOfRange(String),
}

/// Parses `<number><unit>` where unit is one of `ms`, `s`, `m`, `h`. Fractions are allowed
/// (`1.5s`). A bare `0` is accepted as zero.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| DurationError::NoUnit(t.to_string()))?;
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| DurationError::NotANumber(t.to_string()))?;
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(DurationError::UnknownUnit {
                unit: other.to_string(),
                text: t.to_string(),
            })
        }
    };
    let secs = value * scale;
    if !secs.is_finite() || !(0.0..=365.0 * 86400.0).contains(&secs) {
        return Err(DurationError::OutOfRange(t.to_string()));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(3_600_000) && ms > 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) && ms > 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) && ms > 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as `250ms`, `15s`, `5m` or `1h`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                parse_duration(v).map(Dur).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                if v == 0 {
                    Ok(Dur(Duration::ZERO))
                } else {
                    Err(E::custom(format!(
                        "`{v}` has no unit; write e.g. `{v}ms` or `{v}s`"
                    )))
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                if v < 0 {
                    Err(E::custom("a duration cannot be negative"))
                } else {
                    self.visit_u64(v as u64)
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("15s").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
    }

    #[test]
    fn rejects_missing_or_unknown_units() {
        assert!(parse_duration("15")
            .unwrap_err()
            .to_string()
            .contains("no unit"));
        assert!(parse_duration("15d")
            .unwrap_err()
            .to_string()
            .contains("unknown unit"));
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("99999999h")
            .unwrap_err()
            .to_string()
            .contains("out of range"));
    }

    #[test]
    fn displays_in_the_largest_exact_unit() {
        assert_eq!(Dur::ms(100).to_string(), "100ms");
        assert_eq!(Dur::secs(15).to_string(), "15s");
        assert_eq!(Dur::secs(120).to_string(), "2m");
        assert_eq!(Dur::secs(7200).to_string(), "2h");
        assert_eq!(Dur::ms(1500).to_string(), "1500ms");
    }

    #[test]
    fn deserializes_from_yaml() {
        let d: Dur = serde_yaml::from_str("\"30s\"").unwrap();
        assert_eq!(d, Dur::secs(30));
        let e = serde_yaml::from_str::<Dur>("30").unwrap_err().to_string();
        assert!(e.contains("no unit"), "{e}");
    }
}
