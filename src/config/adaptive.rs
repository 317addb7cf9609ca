//! Settings that are either off, a fixed delay, or derived from recent
//! latency (`race_after`, `hedge_after`). Parsed once at load so the request
//! path never looks at the configured string.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
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

/// Response-head latencies kept for the adaptive `hedge_after`.
const HEAD_SAMPLES: usize = 128;
/// `hedge_after = "auto"` before five response-head samples exist.
const HEDGE_DEFAULT: Duration = Duration::from_millis(500);

/// Recent response-head latencies and the `hedge_after` they give: 2 × p95
/// clamped to [50 ms, 5 s] (500 ms until there are five samples). Every
/// 64th sample refreshes the delay, so no request sorts samples on its path.
pub struct HedgeWindow {
    samples: Mutex<VecDeque<Duration>>,
    seen: AtomicU64,
    /// The adaptive delay in µs (0: not enough samples yet).
    auto_us: AtomicU64,
}

impl Default for HedgeWindow {
    fn default() -> Self {
        HedgeWindow {
            samples: Mutex::new(VecDeque::with_capacity(HEAD_SAMPLES)),
            seen: AtomicU64::new(0),
            auto_us: AtomicU64::new(0),
        }
    }
}

impl HedgeWindow {
    /// Keeps one response-head latency.
    pub fn record(&self, d: Duration) {
        let mut g = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if g.len() == HEAD_SAMPLES {
            g.pop_front();
        }
        g.push_back(d);
        let n = self.seen.fetch_add(1, Ordering::Relaxed) + 1;
        if n % 64 == 0 || n == 5 {
            let auto = from_samples(
                g.iter().copied().collect(),
                0.95,
                2,
                Duration::from_millis(50),
                Duration::from_secs(5),
                HEDGE_DEFAULT,
            );
            self.auto_us
                .store(auto.as_micros() as u64, Ordering::Relaxed);
        }
    }

    /// The hedge delay for `setting` now (`None`: off).
    pub fn delay(&self, setting: Adaptive) -> Option<Duration> {
        setting.resolve(|| match self.auto_us.load(Ordering::Relaxed) {
            0 => HEDGE_DEFAULT,
            us => Duration::from_micros(us),
        })
    }
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
    fn hedge_delay_follows_recent_heads() {
        let ms = Duration::from_millis;
        let w = HedgeWindow::default();
        assert_eq!(w.delay(Adaptive::Auto), Some(ms(500)), "no samples yet");
        assert_eq!(w.delay(Adaptive::Off), None);
        assert_eq!(w.delay(Adaptive::Fixed(ms(70))), Some(ms(70)));
        for _ in 0..5 {
            w.record(ms(40));
        }
        assert_eq!(w.delay(Adaptive::Auto), Some(ms(80)), "2 × p95");
        // Only the newest 128 count: the 40 ms ones age out.
        for _ in 0..187 {
            w.record(ms(1));
        }
        assert_eq!(w.delay(Adaptive::Auto), Some(ms(50)), "clamped low");
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
