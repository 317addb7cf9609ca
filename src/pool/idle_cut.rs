//! How long an upstream's idle keep-alive connections may be reused, learnt
//! from the connections that failed on reuse.
//!
//! Something on the path (the proxy's own timeout, an SLB, a NAT gateway)
//! cuts connections idle for longer than its timeout, often without telling
//! anyone. `[pool] upstream_idle` retires pooled connections before a
//! typical cut; when a pooled connection still fails on its first reuse
//! after being idle for `age`, the cut is at most `age`, so from then on
//! this upstream's connections are retired after `age / 2` (never less than
//! [`FLOOR`]). The limit only shrinks, for the life of the member (a reload
//! that changes the upstream starts afresh). A failed reuse costs the client
//! nothing — the request is retried on a new connection — but each one is
//! a wasted round trip, which this removes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The shortest idle lifetime learnt.
pub const FLOOR: Duration = Duration::from_millis(250);

/// The learnt limit in ms (0: nothing learnt yet).
#[derive(Debug, Default)]
pub struct IdleCut(AtomicU64);

impl IdleCut {
    /// The idle lifetime now: `configured`, or less if a cut was seen.
    pub fn limit(&self, configured: Duration) -> Duration {
        match self.0.load(Ordering::Relaxed) {
            0 => configured,
            ms => configured.min(Duration::from_millis(ms)),
        }
    }

    /// The learnt limit, if any.
    pub fn learnt(&self) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// A connection idle for `age` failed on reuse. Returns the new limit
    /// and whether it is the first one learnt, when the limit shrank.
    pub fn learn(&self, age: Duration, configured: Duration) -> Option<(Duration, bool)> {
        let new = (age / 2).max(FLOOR);
        let new_ms = new.as_millis().max(1) as u64;
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let effective = if cur == 0 {
                configured
            } else {
                Duration::from_millis(cur)
            };
            if new >= effective.min(configured) {
                return None;
            }
            match self
                .0
                .compare_exchange(cur, new_ms, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some((new, cur == 0)),
                Err(now) => cur = now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_the_failed_age_only_downwards() {
        let s = Duration::from_secs;
        let cut = IdleCut::default();
        assert_eq!(cut.limit(s(10)), s(10));
        assert_eq!(cut.learn(s(4), s(10)), Some((s(2), true)));
        assert_eq!(cut.limit(s(10)), s(2));
        assert_eq!(cut.learnt(), Some(s(2)));
        // A later failure at an older age teaches nothing new.
        assert_eq!(cut.learn(s(8), s(10)), None);
        assert_eq!(
            cut.learn(s(3), s(10)),
            Some((Duration::from_millis(1500), false))
        );
        // A configured limit below the learnt one wins.
        assert_eq!(cut.limit(s(1)), s(1));
        // Never below the floor.
        assert_eq!(
            cut.learn(Duration::from_millis(10), s(10)),
            Some((FLOOR, false))
        );
        assert_eq!(cut.learn(Duration::ZERO, s(10)), None);
    }

    #[test]
    fn nothing_learnt_when_already_below() {
        let s = Duration::from_secs;
        let cut = IdleCut::default();
        // Configured 1 s: a failure after 3 s of idleness (the sweeper and
        // checkout race a reload that lowered the limit) changes nothing.
        assert_eq!(cut.learn(s(3), s(1)), None);
        assert_eq!(cut.learnt(), None);
    }
}
