//! Candidate ordering strategies. All take the eligible members and reorder
//! them in place, best first; the rest of the list is the failover order.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use super::Member;
use crate::config::schema::Strategy;
use crate::upstream::Target;

/// Orders `v` per `strategy`. Returns the new latency leader for
/// `least_latency` (so the next call can apply the tolerance).
pub fn order(
    strategy: Strategy,
    v: &mut [Arc<Member>],
    target: &Target,
    counter: usize,
    tolerance: Duration,
    leader: Option<&str>,
) -> Option<String> {
    v.sort_by_key(|m| m.entry.priority);
    if v.len() < 2 {
        return v.first().map(|m| m.name().to_string());
    }
    match strategy {
        Strategy::Failover => None,
        Strategy::RoundRobin => {
            let k = counter % v.len();
            v.rotate_left(k);
            None
        }
        Strategy::Weighted => {
            let total: u64 = v.iter().map(|m| u64::from(m.entry.weight.max(1))).sum();
            let mut pick = rand::thread_rng().gen_range(0..total);
            let mut idx = 0;
            for (i, m) in v.iter().enumerate() {
                let w = u64::from(m.entry.weight.max(1));
                if pick < w {
                    idx = i;
                    break;
                }
                pick -= w;
            }
            v[..=idx].rotate_right(1);
            None
        }
        Strategy::LeastLatency => {
            // Unknown latency sorts first so new upstreams get measured.
            v.sort_by_key(|m| m.health.ewma().unwrap_or(Duration::ZERO));
            let best = v[0].health.ewma().unwrap_or(Duration::ZERO);
            // Keep the current leader unless another is faster by more than
            // the tolerance: traffic does not flap on noise.
            if let Some(l) = leader {
                if let Some(i) = v.iter().position(|m| m.name() == l) {
                    let lat = v[i].health.ewma().unwrap_or(Duration::ZERO);
                    if lat <= best + tolerance {
                        v[..=i].rotate_right(1);
                    }
                }
            }
            Some(v[0].name().to_string())
        }
        Strategy::Sticky => {
            // Rendezvous hashing: the same host maps to the same upstream, and
            // only the hosts of a removed upstream move.
            let host = target.host.bare();
            v.sort_by_key(|m| {
                let mut h = DefaultHasher::new();
                host.hash(&mut h);
                m.name().hash(&mut h);
                std::cmp::Reverse(h.finish())
            });
            None
        }
    }
}

/// Zone preference (reverse routes): members of the `local` zone first
/// (every member is local when no zone is set), rotating by `counter`;
/// local members that are `busy` (at `max_inflight`) go behind the other
/// zones' members, busy ones of other zones last.
pub fn by_zone(
    v: &mut [Arc<Member>],
    local: Option<&str>,
    counter: usize,
    busy: impl Fn(&Member) -> bool,
) {
    if v.is_empty() {
        return;
    }
    let n = v.len();
    v.rotate_left(counter % n);
    // A stable sort: the rotation stands within each rank.
    v.sort_by_key(|m| {
        let is_local = local.is_none() || m.entry.zone.as_deref() == local;
        match (is_local, busy(m)) {
            (true, false) => 0u8,
            (false, false) => 1,
            (true, true) => 2,
            (false, true) => 3,
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::BreakerConfig;
    use crate::config::{Applies, UpstreamEntry};
    use crate::upstream::{Host, UpstreamSpec};

    fn members(weights: &[u32]) -> Vec<Arc<Member>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let entry = UpstreamEntry {
                    spec: UpstreamSpec::parse(
                        &format!("u{i}"),
                        &format!("http://127.0.0.1:{}", 1000 + i),
                    )
                    .unwrap(),
                    zone: None,
                    priority: 0,
                    weight: *w,
                    max_fails: 3,
                    fail_timeout: Duration::from_secs(10),
                    applies: Applies::ALL,
                    origin: "test".into(),
                };
                Member::new(entry, &BreakerConfig::default())
            })
            .collect()
    }

    fn target(h: &str) -> Target {
        Target::new(Host::Name(h.into()), 443)
    }

    #[test]
    fn sticky_is_stable_and_spreads() {
        let base = members(&[1, 1, 1, 1]);
        let mut firsts = std::collections::HashSet::new();
        for i in 0..50 {
            let host = format!("h{i}.example");
            let mut a = base.clone();
            order(
                Strategy::Sticky,
                &mut a,
                &target(&host),
                i,
                Duration::ZERO,
                None,
            );
            let mut b = base.clone();
            b.reverse();
            order(
                Strategy::Sticky,
                &mut b,
                &target(&host),
                i + 7,
                Duration::ZERO,
                None,
            );
            assert_eq!(a[0].name(), b[0].name(), "same host, same upstream");
            firsts.insert(a[0].name().to_string());
            // Removing another upstream does not move this host.
            let other = if a[0].name() == "u0" { "u1" } else { "u0" };
            let mut c: Vec<_> = base.iter().filter(|m| m.name() != other).cloned().collect();
            order(
                Strategy::Sticky,
                &mut c,
                &target(&host),
                0,
                Duration::ZERO,
                None,
            );
            assert_eq!(c[0].name(), a[0].name());
        }
        assert_eq!(firsts.len(), 4, "hosts spread over all upstreams");
    }

    #[test]
    fn weighted_follows_weights_and_round_robin_rotates() {
        let base = members(&[1, 3]);
        let mut heavy = 0;
        for i in 0..4000 {
            let mut v = base.clone();
            order(
                Strategy::Weighted,
                &mut v,
                &target("x"),
                i,
                Duration::ZERO,
                None,
            );
            if v[0].name() == "u1" {
                heavy += 1;
            }
            assert_eq!(v.len(), 2);
        }
        assert!(
            (2700..3300).contains(&heavy),
            "{heavy} of 4000 for weight 3:1"
        );
        let mut seen = Vec::new();
        for i in 0..4 {
            let mut v = base.clone();
            order(
                Strategy::RoundRobin,
                &mut v,
                &target("x"),
                i,
                Duration::ZERO,
                None,
            );
            seen.push(v[0].name().to_string());
        }
        assert_eq!(seen, ["u0", "u1", "u0", "u1"]);
    }

    #[test]
    fn least_latency_keeps_leader_within_tolerance() {
        let base = members(&[1, 1]);
        base[0].health.record_success(Duration::from_millis(30));
        base[1].health.record_success(Duration::from_millis(25));
        let mut v = base.clone();
        let leader = order(
            Strategy::LeastLatency,
            &mut v,
            &target("x"),
            0,
            Duration::from_millis(20),
            Some("u0"),
        );
        assert_eq!(v[0].name(), "u0", "5 ms faster is within tolerance");
        assert_eq!(leader.as_deref(), Some("u0"));
        let mut v = base.clone();
        order(
            Strategy::LeastLatency,
            &mut v,
            &target("x"),
            0,
            Duration::from_millis(2),
            Some("u0"),
        );
        assert_eq!(v[0].name(), "u1");
    }

    #[test]
    fn zone_order_prefers_local_rotates_and_puts_busy_locals_behind() {
        let base = members(&[1, 1, 1, 1]);
        let zones = ["a", "a", "b", "b"];
        let zoned: Vec<Arc<Member>> = base
            .iter()
            .zip(zones)
            .map(|(m, z)| {
                let mut e = m.entry.clone();
                e.zone = Some(z.into());
                Member::new(e, &BreakerConfig::default())
            })
            .collect();
        let names = |v: &[Arc<Member>]| v.iter().map(|m| m.name().to_string()).collect::<Vec<_>>();
        let mut firsts = Vec::new();
        for k in 0..4 {
            let mut v = zoned.clone();
            by_zone(&mut v, Some("a"), k, |_| false);
            assert!(
                names(&v[..2]).iter().all(|n| n == "u0" || n == "u1"),
                "{:?}",
                names(&v)
            );
            firsts.push(v[0].name().to_string());
        }
        assert!(
            firsts.contains(&"u0".to_string()) && firsts.contains(&"u1".to_string()),
            "{firsts:?}"
        );
        // u0 at max_inflight: behind zone b, ahead of nothing busy.
        let mut v = zoned.clone();
        by_zone(&mut v, Some("a"), 0, |m| m.name() == "u0");
        assert_eq!(names(&v), ["u1", "u2", "u3", "u0"]);
        // No local zone: every member is local, plain rotation.
        let mut v = zoned.clone();
        by_zone(&mut v, None, 1, |_| false);
        assert_eq!(names(&v), ["u1", "u2", "u3", "u0"]);
    }
}
