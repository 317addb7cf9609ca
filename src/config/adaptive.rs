//! Settings that are either off, a fixed delay, or derived from recent
//! latency (`race_after`, `hedge_after`). Parsed once at load so the request
//! path never looks at the configured string.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adaptive {
    Off,
    Auto,
    Fixed(Duration),
}

impl Adaptive {
    /// `"auto"`, `"off"` or a duration with a unit (`"200ms"`).
    pub fn parse(s: &str) -> Option<Adaptive> {
        match s.trim() {
            "auto" => Some(Adaptive::Auto),
            "off" => Some(Adaptive::Off),
            d => crate::config::duration::parse(d).ok().map(Adaptive::Fixed),
        }
    }

    /// The delay now: `Auto` takes `auto()` (computed from recent samples).
    pub fn resolve(self, auto: impl FnOnce() -> Duration) -> Option<Duration> {
        match self {
            Adaptive::Off => None,
            Adaptive::Fixed(d) => Some(d),
            Adaptive::Auto => Some(auto()),
        }
    }
}

/// `factor` × the `q` quantile of `samples`, clamped to `[lo, hi]`; `none`
/// while fewer than five samples exist.
pub fn from_samples(
    mut samples: Vec<Duration>,
    q: f64,
    factor: u32,
    lo: Duration,
    hi: Duration,
    none: Duration,
) -> Duration {
    if samples.len() < 5 {
        return none;
    }
    samples.sort();
    let i = ((samples.len() as f64 * q) as usize).min(samples.len() - 1);
    (samples[i] * factor).clamp(lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_resolves() {
        assert_eq!(Adaptive::parse("off"), Some(Adaptive::Off));
        assert_eq!(Adaptive::parse(" auto "), Some(Adaptive::Auto));
        assert_eq!(
            Adaptive::parse("250ms"),
            Some(Adaptive::Fixed(Duration::from_millis(250)))
        );
        assert_eq!(Adaptive::parse("soon"), None);
        assert_eq!(
            Adaptive::Auto.resolve(|| Duration::from_secs(1)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(Adaptive::Off.resolve(|| Duration::from_secs(1)), None);
    }

    #[test]
    fn quantile_clamped() {
        let ms = Duration::from_millis;
        let s: Vec<Duration> = (1..=10).map(ms).collect();
        assert_eq!(
            from_samples(s.clone(), 0.9, 3, ms(5), ms(100), ms(1)),
            ms(30)
        );
        assert_eq!(from_samples(s, 0.9, 3, ms(50), ms(100), ms(1)), ms(50));
        assert_eq!(
            from_samples(vec![ms(1)], 0.9, 3, ms(5), ms(100), ms(7)),
            ms(7)
        );
    }
}
