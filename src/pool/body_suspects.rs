//! Differential attribution of response-body faults.
//!
//! A body that stalls or breaks off through upstream A for target T cannot
//! tell, on its own, whether A or T's origin is at fault. So (A, T) becomes
//! a *suspect*: while suspected, A goes behind the other eligible upstreams
//! for T (never excluded: alone, it is still used). The next verdict decides:
//! - another upstream B delivers a response for T whole: A's suspected
//!   faults were A's own and are handed out to be counted against it
//!   (once); A stays behind for T until the entry expires;
//! - B also cuts T: the origin is at fault; the suspicion is dropped and
//!   nobody is counted (a dead target cannot eject healthy upstreams).
//!
//! A client that stops reading or disconnects is no body fault (the body
//! watcher reports only the upstream's stall or error). Bounded: at most
//! [`SUSPECTS_MAX`] targets, each entry lives [`SUSPECT_TTL`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::Member;
use crate::upstream::Target;

/// How long a body fault keeps (upstream, target) suspected.
pub const SUSPECT_TTL: Duration = Duration::from_secs(30);
/// Targets tracked at once; when full, expired entries go, then all.
pub const SUSPECTS_MAX: usize = 1024;

/// What one body fault meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The upstream is now suspected for this target.
    Suspect,
    /// Another upstream cut the same target too: the origin is at fault.
    Origin,
}

struct Entry {
    at: Instant,
    /// Suspected upstreams with their fault counts (a handful at most).
    who: Vec<(Arc<Member>, u32)>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Target, Entry>,
    /// Confirmed faults not yet reported to the pool.
    blame: Vec<(Arc<Member>, u32)>,
}

/// Suspected (upstream, target) pairs; see the module docs.
#[derive(Default)]
pub struct BodySuspects {
    inner: Mutex<Inner>,
    /// Targets in `map`: lets the hot path skip the lock when none are.
    active: AtomicUsize,
    pending: AtomicBool,
}

impl BodySuspects {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sync(&self, g: &Inner) {
        self.active.store(g.map.len(), Ordering::Relaxed);
        self.pending.store(!g.blame.is_empty(), Ordering::Relaxed);
    }

    /// A response body for `t` through `m` stalled or broke off.
    pub fn fault(&self, m: &Arc<Member>, t: &Target) -> Verdict {
        let mut g = self.lock();
        if g.map.len() >= SUSPECTS_MAX && !g.map.contains_key(t) {
            g.map.retain(|_, e| e.at.elapsed() < SUSPECT_TTL);
            if g.map.len() >= SUSPECTS_MAX {
                g.map.clear();
            }
        }
        let now = Instant::now();
        let fresh = g.map.get(t).is_some_and(|e| e.at.elapsed() < SUSPECT_TTL);
        let verdict = match g.map.get_mut(t) {
            Some(e) if fresh && e.who.iter().any(|(w, n)| *n > 0 && !Arc::ptr_eq(w, m)) => {
                g.map.remove(t);
                Verdict::Origin
            }
            Some(e) if fresh => {
                match e.who.iter_mut().find(|(w, _)| Arc::ptr_eq(w, m)) {
                    Some((_, n)) => *n += 1,
                    None => e.who.push((m.clone(), 1)),
                }
                e.at = now;
                Verdict::Suspect
            }
            _ => {
                let who = vec![(m.clone(), 1)];
                g.map.insert(t.clone(), Entry { at: now, who });
                Verdict::Suspect
            }
        };
        self.sync(&g);
        verdict
    }

    /// `by` delivered a response for `t` whole: every other upstream
    /// suspected for `t` is confirmed at fault (see [`Self::take_blame`]);
    /// `by`'s own suspicion is dropped.
    pub fn completed(&self, by: &Member, t: &Target) {
        if self.active.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut g = self.lock();
        let Some(mut e) = g.map.remove(t) else {
            return;
        };
        if e.at.elapsed() < SUSPECT_TTL {
            e.who.retain(|(w, _)| w.id != by.id);
            let confirmed: Vec<_> = e.who.iter().filter(|(_, n)| *n > 0).cloned().collect();
            g.blame.extend(confirmed);
            // Confirmed ones stay behind for this target until the entry
            // expires (a passing health check must not put them first
            // again at once); their faults are counted once.
            e.who.iter_mut().for_each(|(_, n)| *n = 0);
            if !e.who.is_empty() {
                g.map.insert(t.clone(), e);
            }
        }
        self.sync(&g);
    }

    /// Moves the upstreams suspected for `t` behind the others (stable).
    pub fn demote(&self, t: &Target, members: &mut [Arc<Member>]) {
        if self.active.load(Ordering::Relaxed) == 0 || members.len() < 2 {
            return;
        }
        let g = self.lock();
        let Some(e) = g.map.get(t).filter(|e| e.at.elapsed() < SUSPECT_TTL) else {
            return;
        };
        let suspected = |m: &Arc<Member>| e.who.iter().any(|(w, _)| Arc::ptr_eq(w, m));
        // A stable sort on a bool key keeps the strategy order otherwise.
        members.sort_by_key(suspected);
    }

    /// Confirmed faults (upstream, how many) to count, once each.
    pub fn take_blame(&self) -> Vec<(Arc<Member>, u32)> {
        if !self.pending.load(Ordering::Relaxed) {
            return Vec::new();
        }
        let mut g = self.lock();
        let out = std::mem::take(&mut g.blame);
        self.sync(&g);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::BreakerConfig;
    use crate::pool::test_pool;

    fn target(s: &str) -> Target {
        Target::parse_authority(s, None).unwrap()
    }

    fn names(v: &[Arc<Member>]) -> Vec<&str> {
        v.iter().map(|m| m.name()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn suspect_goes_behind_and_is_blamed_when_another_delivers() {
        let p = test_pool(&["a", "b"], BreakerConfig::default());
        let (a, b) = (p.members()[0].clone(), p.members()[1].clone());
        let s = BodySuspects::default();
        let t = target("origin.test:80");
        for _ in 0..3 {
            assert_eq!(s.fault(&a, &t), Verdict::Suspect);
        }
        let mut plan = p.members().to_vec();
        s.demote(&t, &mut plan);
        assert_eq!(names(&plan), ["b", "a"]);
        // Another target is not affected.
        let mut other = p.members().to_vec();
        s.demote(&target("else.test:80"), &mut other);
        assert_eq!(names(&other), ["a", "b"]);
        assert!(s.take_blame().is_empty(), "no verdict before b answers");
        s.completed(&b, &t);
        let blame = s.take_blame();
        assert_eq!(blame.len(), 1);
        assert_eq!((blame[0].0.name(), blame[0].1), ("a", 3));
        s.completed(&b, &t);
        assert!(s.take_blame().is_empty(), "counted once");
        let mut plan = p.members().to_vec();
        s.demote(&t, &mut plan);
        assert_eq!(names(&plan), ["b", "a"], "confirmed: still behind");
        // A new cut through b is not an origin verdict against a's
        // already counted faults.
        assert_eq!(s.fault(&b, &t), Verdict::Suspect);
        tokio::time::advance(SUSPECT_TTL + Duration::from_secs(1)).await;
        let mut plan = p.members().to_vec();
        s.demote(&t, &mut plan);
        assert_eq!(names(&plan), ["a", "b"], "expired: strategy order again");
    }

    #[tokio::test(start_paused = true)]
    async fn origin_that_cuts_through_two_upstreams_blames_nobody() {
        let p = test_pool(&["a", "b"], BreakerConfig::default());
        let (a, b) = (p.members()[0].clone(), p.members()[1].clone());
        let s = BodySuspects::default();
        let t = target("dead.test:80");
        for _ in 0..10 {
            assert_eq!(s.fault(&a, &t), Verdict::Suspect);
            assert_eq!(s.fault(&b, &t), Verdict::Origin);
        }
        s.completed(&b, &t);
        assert!(s.take_blame().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn lone_suspect_is_still_used_and_not_blamed_by_itself() {
        let p = test_pool(&["a"], BreakerConfig::default());
        let a = p.members()[0].clone();
        let s = BodySuspects::default();
        let t = target("origin.test:80");
        s.fault(&a, &t);
        let mut plan = p.members().to_vec();
        s.demote(&t, &mut plan);
        assert_eq!(names(&plan), ["a"]);
        s.completed(&a, &t);
        assert!(s.take_blame().is_empty(), "its own success clears it");
    }

    #[tokio::test(start_paused = true)]
    async fn suspicion_expires() {
        let p = test_pool(&["a", "b"], BreakerConfig::default());
        let (a, b) = (p.members()[0].clone(), p.members()[1].clone());
        let s = BodySuspects::default();
        let t = target("origin.test:80");
        s.fault(&a, &t);
        tokio::time::advance(SUSPECT_TTL + Duration::from_secs(1)).await;
        let mut plan = p.members().to_vec();
        s.demote(&t, &mut plan);
        assert_eq!(names(&plan), ["a", "b"]);
        s.completed(&b, &t);
        assert!(s.take_blame().is_empty(), "a stale fault is not counted");
        // An expired entry is replaced, not merged into an origin verdict.
        s.fault(&a, &t);
        tokio::time::advance(SUSPECT_TTL + Duration::from_secs(1)).await;
        assert_eq!(s.fault(&b, &t), Verdict::Suspect);
    }

    #[tokio::test(start_paused = true)]
    async fn stays_bounded() {
        let p = test_pool(&["a"], BreakerConfig::default());
        let a = p.members()[0].clone();
        let s = BodySuspects::default();
        for i in 0..(SUSPECTS_MAX + 10) {
            s.fault(&a, &target(&format!("h{i}.test:80")));
        }
        assert!(s.lock().map.len() <= SUSPECTS_MAX);
    }
}
