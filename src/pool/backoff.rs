//! Exponential backoff with full jitter (AWS architecture blog): the delay
//! before retry round `n` is uniform in [0, min(cap, base · 2^n)].

use std::time::Duration;

use rand::Rng;

pub fn full_jitter(round: u32, base: Duration, cap: Duration) -> Duration {
    let ceiling = base
        .checked_mul(1u32 << round.min(16))
        .unwrap_or(cap)
        .min(cap);
    if ceiling.is_zero() {
        return Duration::ZERO;
    }
    let us = rand::thread_rng().gen_range(0..=ceiling.as_micros() as u64);
    Duration::from_micros(us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_growing() {
        let base = Duration::from_millis(10);
        let cap = Duration::from_millis(100);
        for round in 0..20 {
            let d = full_jitter(round, base, cap);
            let ceiling = (base * 2u32.pow(round.min(16))).min(cap);
            assert!(d <= ceiling, "round {round}: {d:?} > {ceiling:?}");
        }
        // Jitter actually varies.
        let v: std::collections::HashSet<_> = (0..50).map(|_| full_jitter(5, base, cap)).collect();
        assert!(v.len() > 10);
    }
}
