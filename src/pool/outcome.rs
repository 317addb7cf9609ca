//! The one way into health accounting: every use of a member (a connect, an
//! exchange, a health check, the fleet's reports) ends in one [`Outcome`],
//! and [`Pool::report`] turns it into health state, events, metrics and the
//! fleet verdict. Nobody outside the pool touches a member's health.
//!
//! Who is at fault decides who is punished (issue 10): only an upstream
//! fault counts towards `max_fails`, the breaker and ejection; a target's
//! or a client's fault counts against nobody.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::health::{self, Transition};
use super::{Member, Pool};
use crate::upstream::{ConnectError, FaultClass, Phase};

/// What one use of a member came to, from the member's point of view.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// It served (connected, or answered) in this time.
    Served(Duration),
    /// Its own fault (refused, reset, timeout, TLS, handshake, 407, a
    /// proxy's own error): counts against it.
    UpstreamFault(ConnectError),
    /// It worked, but the target behind it failed: counts against nobody.
    TargetFault(ConnectError),
    /// The client broke the exchange (malformed or abandoned body, reset):
    /// counts against nobody.
    ClientFault,
    /// Given up without a verdict (a race loser that was not slow, a
    /// cancelled attempt): frees its half-open trial slot, nothing else.
    Abandoned,
    /// An active health check's result.
    Checked(Check),
    /// The other gateways' reports about it (`[fleet]`).
    Fleet(FleetReport),
}

/// One active check's result and the settings it is judged by.
#[derive(Debug, Clone)]
pub struct Check {
    pub ok: bool,
    /// The check went through the proxy handshake to a target (or fetched a
    /// URL); a shallow one cannot vouch for auth or proxy errors.
    pub deep: bool,
    pub detail: String,
    pub rise: u32,
    pub fall: u32,
}

/// What the fleet says about a member (see pool/health/fleet.rs).
#[derive(Debug, Clone)]
pub struct FleetReport {
    /// The other gateways that report it down, with their reasons.
    pub down: Vec<(String, String)>,
    pub quorum: usize,
    /// One of them is new since the last report.
    pub fresh: bool,
}

impl Outcome {
    /// The member's connection broke after the request went out and before
    /// a response head came: its fault.
    pub fn broke_before_answer() -> Outcome {
        Outcome::UpstreamFault(ConnectError::Reset {
            phase: Phase::FirstByte,
            proxy: true,
        })
    }

    /// No response head from the member within `after`: its fault.
    pub fn no_answer_within(after: Duration) -> Outcome {
        Outcome::UpstreamFault(ConnectError::timeout(Phase::FirstByte, after, true))
    }

    /// A failure, by who is at fault: the upstream's own (including auth
    /// and policy), the target's, or nobody's (our own limits).
    pub fn of_error(e: ConnectError) -> Outcome {
        match e.fault() {
            FaultClass::Upstream | FaultClass::Auth | FaultClass::Policy => {
                Outcome::UpstreamFault(e)
            }
            FaultClass::Target => Outcome::TargetFault(e),
            FaultClass::Local => Outcome::Abandoned,
        }
    }
}

impl Pool {
    /// Records one outcome of `m`: the only entry into health accounting.
    pub fn report(&self, m: &Member, outcome: Outcome) {
        match outcome {
            Outcome::Served(took) => self.report_success(m, took),
            Outcome::UpstreamFault(e) => self.report_failure(m, &e),
            Outcome::TargetFault(_) | Outcome::ClientFault | Outcome::Abandoned => {
                m.health.release_trial()
            }
            Outcome::Checked(c) => {
                let t = m
                    .health
                    .record_check(c.ok, c.deep, &c.detail, c.rise, c.fall);
                self.transitions(m, t);
            }
            Outcome::Fleet(f) => {
                let t = self.within_ejection_cap(|may_eject| {
                    m.health
                        .fleet_view(f.down.clone(), f.quorum, f.fresh, may_eject)
                });
                metrics::gauge!("proxyguard_fleet_reports", "upstream" => m.name().to_string())
                    .set(f.down.len() as f64);
                self.count_ejections(&t);
                self.transitions(m, t);
            }
        }
    }

    /// Runs `f(may_eject)` with the ejection cap applied: counting the
    /// ejected and ejecting one more is one step, so two failures at once
    /// cannot both pass `max_ejection_percent`.
    fn within_ejection_cap<R>(&self, f: impl FnOnce(bool) -> R) -> R {
        let snap = self.snap.load_full();
        let (cfg, all) = (&snap.cfg, &snap.members);
        let _one_at_a_time = self.ejecting.lock().unwrap_or_else(|e| e.into_inner());
        let ejected = all.iter().filter(|x| x.health.is_ejected()).count();
        let cap = (all.len() * cfg.max_ejection_percent as usize) / 100;
        let floor = usize::from(cfg.max_ejection_percent > 0);
        f(ejected < cap.max(floor))
    }

    fn count_ejections(&self, t: &[Transition]) {
        if t.iter().any(|t| matches!(t, Transition::Ejected { .. })) {
            self.stats.ejections.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn report_success(&self, m: &Member, took: Duration) {
        metrics::histogram!("proxyguard_upstream_connect_seconds", "upstream" => m.name().to_string())
            .record(took.as_secs_f64());
        self.transitions(m, m.health.record_success(took));
        self.fleet_note(m);
    }

    /// Target and local faults never get here (see [`Outcome::of_error`]);
    /// should one be passed anyway, it does not count.
    fn report_failure(&self, m: &Member, err: &ConnectError) {
        if matches!(err.fault(), FaultClass::Target | FaultClass::Local) {
            m.health.release_trial();
            return;
        }
        let base = self.config().base_ejection.0;
        let t = self.within_ejection_cap(|may_eject| m.health.record_failure(err, may_eject, base));
        metrics::counter!("proxyguard_upstream_failures_total", "upstream" => m.name().to_string(), "reason" => health::reason_label(err)).increment(1);
        self.count_ejections(&t);
        self.transitions(m, t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::BreakerConfig;
    use crate::upstream::TargetFault;

    fn pool() -> Pool {
        let breaker = BreakerConfig {
            failure_threshold: 1,
            ..BreakerConfig::default()
        };
        crate::pool::test_pool(&["a"], breaker)
    }

    fn dead_target() -> ConnectError {
        ConnectError::TargetFailed {
            status: 502,
            reason: "Unable to connect".into(),
            kind: TargetFault::Refused,
            next_hop: None,
        }
    }

    #[test]
    fn client_and_target_faults_never_count_against_the_member() {
        let p = pool();
        let m = p.members()[0].clone();
        for _ in 0..5 {
            p.report(&m, Outcome::ClientFault);
            p.report(&m, Outcome::of_error(dead_target()));
            p.report(&m, Outcome::TargetFault(dead_target()));
            p.report(&m, Outcome::Abandoned);
        }
        assert!(matches!(
            Outcome::of_error(dead_target()),
            Outcome::TargetFault(_)
        ));
        assert_eq!(m.health.failures.load(Ordering::Relaxed), 0);
        assert!(m.health.eligible());
        assert!(!m.health.breaker_open());
        assert_eq!(p.stats.ejections.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_upstream_fault_counts_and_ejects() {
        let p = pool();
        let m = p.members()[0].clone();
        let reset = ConnectError::Reset {
            phase: Phase::Connect,
            proxy: true,
        };
        assert!(matches!(
            Outcome::of_error(reset),
            Outcome::UpstreamFault(_)
        ));
        p.report(&m, Outcome::broke_before_answer());
        assert_eq!(m.health.failures.load(Ordering::Relaxed), 1);
        assert!(!m.health.eligible(), "max_fails 1: ejected");
        assert!(m.health.breaker_open(), "failure_threshold 1: open");
        assert_eq!(p.stats.ejections.load(Ordering::Relaxed), 1);
        let last = m.health.last_error().map(|e| e.1).unwrap_or_default();
        assert!(last.contains("reset"), "{last}");
    }

    #[test]
    fn a_success_and_checks_go_through_the_same_door() {
        let p = pool();
        let m = p.members()[0].clone();
        p.report(&m, Outcome::Served(Duration::from_millis(3)));
        assert_eq!(m.health.successes.load(Ordering::Relaxed), 1);
        assert_eq!(m.health.ewma(), Some(Duration::from_millis(3)));
        let check = |ok| Check {
            ok,
            deep: false,
            detail: "probe".into(),
            rise: 1,
            fall: 1,
        };
        p.report(&m, Outcome::Checked(check(false)));
        assert!(!m.health.eligible(), "a failed check takes it down");
        assert_eq!(m.health.failures.load(Ordering::Relaxed), 0);
        p.report(&m, Outcome::Checked(check(true)));
        assert!(m.health.eligible());
    }
}
