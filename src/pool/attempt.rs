//! The one attempt engine: connect through one of a plan's candidates
//! inside one deadline, and report every outcome to health exactly once.
//!
//! plan (candidates in strategy order) → admit (breaker) → connect, racing
//! the next candidate after `race_after` → on an upstream fault, the next
//! candidate (a new round after a full-jitter backoff) → deadline.
//!
//! Who is at fault decides who is punished:
//! - an upstream fault (refused, reset, timeout, TLS, handshake, 407) counts
//!   against that upstream at once;
//! - a working proxy reporting that the *target* failed (CONNECT 5xx, SOCKS5
//!   reply 3–6, a policy 403) counts against nobody yet: one more upstream is
//!   asked. If it reaches the target, the first one's report was its own
//!   fault and is counted; if it fails the same way, the target is dead and
//!   the caller gets the target's error (and may cache it);
//! - a race loser that was slower than `race_after` counts as a timeout, so a
//!   blackholed upstream is ejected instead of costing every connection.
//!
//! Connecting happens before any client byte is sent upstream, so none of
//! this can duplicate a request. Every verdict goes through the pool's one
//! entry point (`Pool::report`, pool/outcome.rs).
//!
//! Used by forward (tunnels and plain-HTTP connections, through `route.rs`)
//! and by reverse routes (backend connections, candidates in zone order).

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;

use super::{Member, Outcome, Pool, Traffic};
use crate::upstream::{ConnectError, FaultClass, Phase};

/// How hard to try, resolved for this one connection.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub max_attempts: usize,
    pub deadline: Duration,
    pub race_after: Option<Duration>,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
}

type Attempt<'a, T> =
    Pin<Box<dyn Future<Output = (Arc<Member>, Instant, Result<T, ConnectError>)> + Send + 'a>>;

struct Run<'a, T, F> {
    pool: &'a Pool,
    /// The plan's candidates, then any the pool gained since (`follow`).
    /// Borrowed from the plan; copied only when the pool is followed and
    /// has gained members.
    cands: Cow<'a, [Arc<Member>]>,
    /// Follow the pool (for this traffic): see [`connect`].
    follow: Option<Traffic>,
    budget: Budget,
    connect: F,
    deadline: Instant,
    /// Everything is out of service: the plan holds the least bad, use them
    /// without asking admission.
    all_out: bool,
    inflight: FuturesUnordered<Attempt<'a, T>>,
    /// Members with an attempt in flight, and when it started.
    running: Vec<(Arc<Member>, Instant)>,
    launched: usize,
    next: usize,
    round: u32,
    /// Upstreams that reported the target as failed (awaiting another's verdict).
    suspects: Vec<(Arc<Member>, ConnectError)>,
    last: Option<ConnectError>,
    any_failed: bool,
}

impl<'a, T, F, Fut> Run<'a, T, F>
where
    T: Send + 'a,
    F: Fn(Arc<Member>) -> Fut,
    Fut: Future<Output = Result<T, ConnectError>> + Send + 'a,
{
    /// Starts the next admissible candidate; false when none is left.
    /// `first_round` limits racing to candidates not yet tried once.
    fn launch(&mut self, first_round: bool) -> bool {
        let n = self.cands.len();
        let mut skipped = 0;
        while self.launched < self.budget.max_attempts && skipped < 2 * n {
            if first_round && self.next >= n {
                return false;
            }
            let m = self.cands[self.next % n].clone();
            self.next += 1;
            let busy = self.running.iter().any(|(r, _)| Arc::ptr_eq(r, &m));
            let gave_verdict = self.suspects.iter().any(|(s, _)| Arc::ptr_eq(s, &m));
            if busy || gave_verdict {
                skipped += 1;
                continue;
            }
            let admitted = if self.all_out {
                true
            } else {
                let (ok, t) = m.health.try_admit();
                self.pool.transitions(&m, t);
                ok
            };
            if !admitted {
                skipped += 1;
                continue;
            }
            let now = Instant::now();
            let remaining = self.deadline.saturating_duration_since(now);
            if remaining.is_zero() {
                self.pool.report(&m, Outcome::Abandoned);
                return false;
            }
            let fut = (self.connect)(m.clone());
            let who = m.clone();
            self.inflight.push(Box::pin(async move {
                let r = match tokio::time::timeout(remaining, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(ConnectError::timeout(Phase::Connect, remaining, true)),
                };
                (who, now, r)
            }));
            self.running.push((m, now));
            self.launched += 1;
            return true;
        }
        false
    }

    /// Appends the eligible members the pool gained since the plan; true
    /// when there were any (`next` then points at the first of them).
    fn adopt_new_members(&mut self) -> bool {
        let Some(traffic) = self.follow else {
            return false;
        };
        let fresh: Vec<Arc<Member>> = self
            .pool
            .members()
            .iter()
            .filter(|m| traffic.applies(m.entry.applies) && m.health.eligible())
            .filter(|m| !self.cands.iter().any(|c| Arc::ptr_eq(c, m)))
            .cloned()
            .collect();
        if fresh.is_empty() {
            return false;
        }
        tracing::debug!(added = fresh.len(), "pool changed during this connection");
        self.next = self.cands.len();
        self.cands.to_mut().extend(fresh);
        true
    }

    /// The next attempt after an upstream fault: a member the pool gained
    /// meanwhile at once, else a new round after a backoff once every
    /// candidate was tried.
    async fn relaunch(&mut self) -> bool {
        if self.next >= self.cands.len() && self.adopt_new_members() {
            return self.launch(false);
        }
        let n = self.cands.len();
        if self.next > 0 && self.next % n == 0 {
            let pause = super::backoff::full_jitter(
                self.round,
                self.budget.backoff_base,
                self.budget.backoff_cap,
            );
            self.round += 1;
            let pause = pause.min(self.deadline.saturating_duration_since(Instant::now()));
            tokio::time::sleep(pause).await;
        }
        self.launch(false)
    }

    fn finish_success(&mut self, m: &Arc<Member>, took: Duration) {
        self.pool.report(m, Outcome::Served(took));
        for (other, since) in std::mem::take(&mut self.running) {
            let slow = self.budget.race_after.is_some_and(|r| since.elapsed() >= r);
            let outcome = if slow {
                let e = ConnectError::timeout(Phase::ProxyHandshake, since.elapsed(), true);
                Outcome::UpstreamFault(e)
            } else {
                Outcome::Abandoned
            };
            self.pool.report(&other, outcome);
        }
        // Another upstream reached the target these reported as failed.
        for (s, e) in std::mem::take(&mut self.suspects) {
            self.pool
                .report(&s, Outcome::of_error(e.confirmed_upstream_fault()));
        }
        let first = &self.cands[0];
        if !Arc::ptr_eq(m, first) || self.any_failed {
            self.pool.stats.failovers.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("proxyguard_failovers_total").increment(1);
        }
        if !self.any_failed && !Arc::ptr_eq(m, first) {
            self.pool
                .stats
                .races_won_by_later
                .fetch_add(1, Ordering::Relaxed);
            metrics::counter!("proxyguard_races_won_total").increment(1);
        }
    }

    /// Handles one failed attempt; false when the run should stop.
    async fn on_failure(&mut self, m: Arc<Member>, e: ConnectError) -> bool {
        tracing::debug!(upstream = m.name(), error = %e, "upstream attempt failed");
        self.any_failed = true;
        if e.needs_second_opinion() {
            let mut e = e;
            if let ConnectError::TargetFailed { next_hop, .. } = &mut e {
                *next_hop = Some(m.name().to_string());
            }
            // No verdict yet: another upstream's answer decides.
            self.pool.report(&m, Outcome::Abandoned);
            self.suspects.push((m, e.clone()));
            self.last = Some(e);
            // Two upstreams agree: the target is the problem.
            if self.suspects.len() >= 2 {
                return !self.inflight.is_empty();
            }
            return self.launch(false) || !self.inflight.is_empty();
        }
        match e.fault() {
            FaultClass::Target | FaultClass::Local => {
                self.pool.report(&m, Outcome::of_error(e.clone()));
                self.last = Some(e);
                !self.inflight.is_empty()
            }
            FaultClass::Upstream | FaultClass::Auth | FaultClass::Policy => {
                self.pool.report(&m, Outcome::UpstreamFault(e.clone()));
                self.last = Some(e);
                if !self.inflight.is_empty() {
                    return true;
                }
                self.pool.stats.retries.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("proxyguard_retries_total").increment(1);
                self.relaunch().await
            }
        }
    }

    fn race_due(&self) -> Option<Duration> {
        let r = self.budget.race_after?;
        let untried = self.next < self.cands.len();
        (untried && self.launched < self.budget.max_attempts && self.suspects.is_empty())
            .then_some(r)
    }

    async fn go(mut self) -> Result<(T, Arc<Member>), ConnectError> {
        if !self.launch(false) {
            return Err(ConnectError::NoRoute(
                "no upstream admitted a connection".into(),
            ));
        }
        loop {
            let race = self.race_due();
            let race_timer = async move {
                match race {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                done = self.inflight.next() => {
                    let Some((m, since, r)) = done else {
                        break;
                    };
                    self.running.retain(|(x, _)| !Arc::ptr_eq(x, &m));
                    match r {
                        Ok(v) => {
                            self.finish_success(&m, since.elapsed());
                            return Ok((v, m));
                        }
                        Err(e) => {
                            if !self.on_failure(m, e).await {
                                break;
                            }
                        }
                    }
                }
                _ = race_timer => {
                    // The chosen upstream is slow: race the next one.
                    if self.launch(true) {
                        self.pool.stats.races_started.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("proxyguard_races_started_total").increment(1);
                    }
                }
            }
        }
        for (other, _) in std::mem::take(&mut self.running) {
            self.pool.report(&other, Outcome::Abandoned);
        }
        // A target fault that no upstream contradicted is the answer.
        if let Some((_, e)) = self.suspects.first() {
            return Err(e.clone());
        }
        Err(self
            .last
            .unwrap_or_else(|| ConnectError::timeout(Phase::Connect, self.budget.deadline, true)))
    }
}

/// Connects through one of `cands` (strategy order) with `connect`.
///
/// With `follow` (a plan of the pool itself, for this traffic): once every
/// planned candidate failed, eligible members the pool gained since (a
/// discovery round or reload replaced the set meanwhile) are tried before
/// the failed ones again, so a request planned on a member just removed
/// (and stopped) is served by its successor. Without it (a reverse route's
/// fixed backends), only `cands` are tried.
pub async fn connect<'a, T, F, Fut>(
    pool: &'a Pool,
    cands: &'a [Arc<Member>],
    follow: Option<Traffic>,
    budget: Budget,
    connect: F,
) -> Result<(T, Arc<Member>), ConnectError>
where
    T: Send + 'a,
    F: Fn(Arc<Member>) -> Fut,
    Fut: Future<Output = Result<T, ConnectError>> + Send + 'a,
{
    if cands.is_empty() {
        return Err(ConnectError::NoRoute("no upstream to try".into()));
    }
    let run = Run {
        pool,
        cands: Cow::Borrowed(cands),
        follow,
        budget,
        connect,
        deadline: Instant::now() + budget.deadline,
        all_out: cands.iter().all(|m| !m.health.eligible()),
        inflight: FuturesUnordered::new(),
        running: Vec::new(),
        launched: 0,
        next: 0,
        round: 0,
        suspects: Vec::new(),
        last: None,
        any_failed: false,
    };
    run.go().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::BreakerConfig;
    use crate::pool::test_pool;
    use crate::upstream::TargetFault;
    use std::collections::HashMap;

    /// What the stub connector does for one upstream.
    #[derive(Clone)]
    enum Act {
        Ok(u64),
        Refused(u64),
        Hang,
        TargetDead,
    }

    fn budget(race_after: Option<u64>) -> Budget {
        Budget {
            max_attempts: 3,
            deadline: Duration::from_secs(5),
            race_after: race_after.map(Duration::from_millis),
            backoff_base: Duration::from_millis(20),
            backoff_cap: Duration::from_millis(100),
        }
    }

    async fn run(
        p: &Pool,
        acts: &[(&str, Act)],
        b: Budget,
    ) -> (Result<String, ConnectError>, Duration) {
        let names: Vec<String> = p.members().iter().map(|m| m.name().into()).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let (r, took, _) = run_in(p, &names, acts, b).await;
        (r, took)
    }

    /// Runs the engine over the members named in `order`, in that order;
    /// also says which were dialled, in order.
    async fn run_in(
        p: &Pool,
        order: &[&str],
        acts: &[(&str, Act)],
        b: Budget,
    ) -> (Result<String, ConnectError>, Duration, Vec<String>) {
        let acts: HashMap<String, Act> = acts
            .iter()
            .map(|(n, a)| (n.to_string(), a.clone()))
            .collect();
        let all = p.members();
        let cands: Vec<Arc<Member>> = order
            .iter()
            .filter_map(|n| all.iter().find(|m| m.name() == *n).cloned())
            .collect();
        let dialled = std::sync::Mutex::new(Vec::new());
        let start = Instant::now();
        let r = connect(p, &cands, None, b, |m: Arc<Member>| {
            dialled.lock().unwrap().push(m.name().to_string());
            let act = acts.get(m.name()).cloned().unwrap_or(Act::Hang);
            async move {
                match act {
                    Act::Ok(ms) => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Ok(m.name().to_string())
                    }
                    Act::Refused(ms) => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Err(ConnectError::Refused {
                            addr: "stub".into(),
                            proxy: true,
                        })
                    }
                    Act::Hang => std::future::pending().await,
                    Act::TargetDead => Err(ConnectError::TargetFailed {
                        status: 500,
                        reason: "Unable to connect".into(),
                        kind: TargetFault::Refused,
                        next_hop: None,
                    }),
                }
            }
        })
        .await
        .map(|(v, _)| v);
        let took = start.elapsed();
        (r, took, dialled.into_inner().unwrap())
    }

    fn failures(p: &Pool, name: &str) -> u64 {
        p.members()
            .iter()
            .find(|m| m.name() == name)
            .map(|m| m.health.failures.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn fails_over_and_blames_the_refusing_upstream() {
        let p = test_pool(&["a", "b"], BreakerConfig::default());
        let (r, _) = run(
            &p,
            &[("a", Act::Refused(1)), ("b", Act::Ok(1))],
            budget(None),
        )
        .await;
        assert_eq!(r.unwrap(), "b");
        assert_eq!(failures(&p, "a"), 1);
        assert_eq!(failures(&p, "b"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn races_a_silent_upstream_and_counts_it_as_a_timeout() {
        let p = test_pool(&["a", "b"], BreakerConfig::default());
        let (r, took) = run(
            &p,
            &[("a", Act::Hang), ("b", Act::Ok(5))],
            budget(Some(100)),
        )
        .await;
        assert_eq!(r.unwrap(), "b");
        assert_eq!(took, Duration::from_millis(105));
        assert_eq!(failures(&p, "a"), 1, "the blackholed loser is blamed");
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_the_deadline() {
        let p = test_pool(&["a", "b"], BreakerConfig::default());
        let (r, took) = run(&p, &[("a", Act::Hang), ("b", Act::Hang)], budget(Some(100))).await;
        assert!(matches!(r, Err(ConnectError::Timeout { .. })), "{r:?}");
        assert!(
            took <= Duration::from_secs(5) + Duration::from_millis(1),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_one_upstream_after_a_bounded_backoff() {
        let p = test_pool(&["a"], BreakerConfig::default());
        // The first refusal ejects `a` (max_fails 1); the least-bad plan is
        // still tried again after the backoff, and fails each time.
        let (r, took) = run(&p, &[("a", Act::Refused(1))], budget(None)).await;
        assert!(matches!(r, Err(ConnectError::Refused { .. })), "{r:?}");
        // Three attempts, two backoffs of at most 20 ms and 40 ms.
        assert!(took <= Duration::from_millis(3 + 20 + 40), "{took:?}");
        assert!(failures(&p, "a") >= 1);
    }

    #[tokio::test(start_paused = true)]
    async fn open_breaker_is_not_admitted() {
        let cfg = BreakerConfig {
            failure_threshold: 1,
            ..BreakerConfig::default()
        };
        let p = test_pool(&["a", "b"], cfg);
        let a = p.members()[0].clone();
        a.health.record_failure(
            &ConnectError::Refused {
                addr: "x".into(),
                proxy: true,
            },
            false,
            Duration::from_secs(1),
        );
        assert!(a.health.breaker_open());
        let (r, _) = run(&p, &[("a", Act::Ok(1)), ("b", Act::Ok(1))], budget(None)).await;
        assert_eq!(r.unwrap(), "b");
    }

    #[tokio::test(start_paused = true)]
    async fn dead_target_blames_nobody() {
        let p = test_pool(&["a", "b", "c"], BreakerConfig::default());
        let all = [
            ("a", Act::TargetDead),
            ("b", Act::TargetDead),
            ("c", Act::Ok(1)),
        ];
        let (r, _) = run(&p, &all, budget(None)).await;
        assert!(matches!(r, Err(ConnectError::TargetFailed { .. })), "{r:?}");
        for n in ["a", "b", "c"] {
            assert_eq!(failures(&p, n), 0, "{n} was blamed for a dead target");
        }
        assert!(p.members().iter().all(|m| m.health.eligible()));
    }

    #[tokio::test(start_paused = true)]
    async fn target_fault_contradicted_by_another_upstream_blames_the_first() {
        let p = test_pool(&["a", "b"], BreakerConfig::default());
        let (r, _) = run(
            &p,
            &[("a", Act::TargetDead), ("b", Act::Ok(1))],
            budget(None),
        )
        .await;
        assert_eq!(r.unwrap(), "b");
        assert_eq!(failures(&p, "a"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn lone_upstream_reporting_a_dead_target_is_not_blamed() {
        let p = test_pool(&["a"], BreakerConfig::default());
        let (r, _) = run(&p, &[("a", Act::TargetDead)], budget(None)).await;
        assert!(matches!(r, Err(ConnectError::TargetFailed { .. })), "{r:?}");
        assert_eq!(failures(&p, "a"), 0);
    }

    /// What reverse routes rely on: candidates in the order given (the
    /// zone order), the next one *in that order* raced after `race_after`
    /// (not the fastest), the silent one blamed; a budget of one attempt
    /// (the last a request has left) never races, and a deadline shorter
    /// than `connect_deadline` (the route's timeout) ends the run.
    #[tokio::test(start_paused = true)]
    async fn keeps_the_given_order_and_honours_a_reduced_budget() {
        let p = test_pool(&["a", "b", "c"], BreakerConfig::default());
        let acts = [("a", Act::Ok(5)), ("b", Act::Hang), ("c", Act::Ok(1))];
        let (r, took, dialled) = run_in(&p, &["b", "a", "c"], &acts, budget(Some(100))).await;
        assert_eq!(r.unwrap(), "a");
        assert_eq!(took, Duration::from_millis(105));
        assert_eq!(dialled, ["b", "a"], "c never dialled");
        assert_eq!(failures(&p, "b"), 1, "the silent backend is blamed");
        let p = test_pool(&["a", "b"], BreakerConfig::default());
        let last = Budget {
            max_attempts: 1,
            deadline: Duration::from_millis(300),
            ..budget(Some(100))
        };
        let (r, took, dialled) = run_in(&p, &["b", "a"], &acts, last).await;
        assert!(matches!(r, Err(ConnectError::Timeout { .. })), "{r:?}");
        assert_eq!(took, Duration::from_millis(300));
        assert_eq!(dialled, ["b"], "one attempt left: no race");
    }
}
