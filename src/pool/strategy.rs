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
