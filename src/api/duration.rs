use std::{fmt, str::FromStr, time::Duration};

/// A duration written the way Kubernetes users write them (`2160h`, `90m`, `1h30m`, `45s`).
///
/// The same grammar is accepted by CEL's `duration()`, so admission and the operator agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GoDuration(pub Duration);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: expected digits followed by h, m or s, e.g. 2160h or 1h30m")]
pub struct ParseDurationError {
    input: String,
}

impl FromStr for GoDuration {
    type Err = ParseDurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = || ParseDurationError {
            input: input.to_string(),
        };
        if input.is_empty() {
            return Err(err());
        }
        let mut total: u64 = 0;
        let mut digits = String::new();
        for ch in input.chars() {
            if ch.is_ascii_digit() {
                digits.push(ch);
                continue;
            }
            let unit = match ch {
                'h' => 3600,
                'm' => 60,
                's' => 1,
                _ => return Err(err()),
            };
            let value: u64 = digits.parse().map_err(|_| err())?;
            digits.clear();
            total = value
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(err)?;
        }
        if !digits.is_empty() {
            return Err(err());
        }
        Ok(GoDuration(Duration::from_secs(total)))
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs();
        let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
        if secs == 0 {
            return write!(f, "0s");
        }
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_style_durations() {
        assert_eq!(
            "43800h".parse::<GoDuration>().unwrap().0.as_secs(),
            43800 * 3600
        );
        assert_eq!("1h30m".parse::<GoDuration>().unwrap().0.as_secs(), 5400);
        assert_eq!("45s".parse::<GoDuration>().unwrap().0.as_secs(), 45);
    }

    #[test]
    fn rejects_malformed_durations() {
        for bad in ["", "10", "h", "10d", "1.5h", "-1h"] {
            assert!(
                bad.parse::<GoDuration>().is_err(),
                "{bad} should be rejected"
            );
        }
    }

    #[test]
    fn display_round_trips() {
        for text in ["2160h", "1h30m", "45s", "1h0m5s"] {
            let parsed: GoDuration = text.parse().unwrap();
            let again: GoDuration = parsed.to_string().parse().unwrap();
            assert_eq!(parsed, again);
        }
    }
}
