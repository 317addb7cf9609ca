//! Unit tests of the health model (outlier ejection, breaker, checks, fleet).

use super::*;
use crate::config::duration::Dur;
use crate::upstream::{Phase, UpstreamSpec};

fn entry(max_fails: u32) -> UpstreamEntry {
    UpstreamEntry {
        spec: UpstreamSpec::direct("t"),
        zone: None,
        priority: 0,
        weight: 1,
        max_fails,
        fail_timeout: Duration::from_secs(10),
        applies: crate::config::Applies::ALL,
        origin: "test".into(),
    }
}

fn refused() -> ConnectError {
    ConnectError::Refused {
        addr: "x".into(),
        proxy: true,
    }
}

#[test]
fn ejects_after_max_fails_and_grows() {
    let h = Health::new(&entry(2), &BreakerConfig::default());
    let base = Duration::from_millis(50);
    assert!(h.record_failure(&refused(), true, base).is_empty());
    let t = h.record_failure(&refused(), true, base);
    assert!(
        matches!(t[0], Transition::Ejected { until_ms: 50, .. }),
        "{t:?}"
    );
    assert_eq!(h.state(), State::Ejected);
    std::thread::sleep(Duration::from_millis(70));
    assert_eq!(h.state(), State::Healthy);
    h.record_failure(&refused(), true, base);
    let t = h.record_failure(&refused(), true, base);
    assert!(
        matches!(t[0], Transition::Ejected { until_ms: 100, .. }),
        "{t:?}"
    );
}

#[test]
fn auth_fault_ejects_at_once_with_its_reason() {
    let h = Health::new(&entry(5), &BreakerConfig::default());
    let t = h.record_failure(
        &ConnectError::ProxyAuthRejected {
            scheme: "Basic".into(),
        },
        true,
        Duration::from_secs(1),
    );
    assert!(matches!(&t[0], Transition::Ejected { reason, .. } if reason == "auth"));
    assert!(!h.eligible());
}

#[test]
fn ejection_cap_respected() {
    let h = Health::new(&entry(1), &BreakerConfig::default());
    h.record_failure(&refused(), false, Duration::from_secs(1));
    assert!(h.eligible());
}

#[test]
fn breaker_opens_half_opens_and_closes() {
    let cfg = BreakerConfig {
        failure_threshold: 3,
        open_for: Dur::millis(60),
        half_open_trials: 1,
        ..BreakerConfig::default()
    };
    let h = Health::new(&entry(100), &cfg);
    let err = ConnectError::Timeout {
        phase: Phase::Tcp,
        after: Duration::from_secs(1),
        proxy: true,
    };
    for _ in 0..2 {
        h.record_failure(&err, true, Duration::from_secs(1));
    }
    assert_eq!(h.breaker_state(), BreakerState::Closed);
    let t = h.record_failure(&err, true, Duration::from_secs(1));
    assert!(t.contains(&Transition::BreakerOpened));
    assert_eq!(h.state(), State::BreakerOpen);
    assert!(!h.try_admit().0);
    std::thread::sleep(Duration::from_millis(80));
    assert_eq!(h.breaker_state(), BreakerState::HalfOpen);
    assert!(h.try_admit().0, "one trial allowed");
    assert!(!h.try_admit().0, "only one trial");
    let t = h.record_success(Duration::from_millis(1));
    assert!(t.contains(&Transition::BreakerClosed));
    assert_eq!(h.state(), State::Healthy);
}

#[test]
fn checks_rise_and_fall() {
    let h = Health::new(&entry(1), &BreakerConfig::default());
    h.record_check(false, true, "x", 2, 2);
    assert_eq!(h.state(), State::Healthy);
    assert_eq!(
        h.record_check(false, true, "x", 2, 2),
        vec![Transition::CheckDown]
    );
    assert_eq!(h.state(), State::Down);
    h.record_check(true, true, "", 2, 2);
    assert_eq!(h.state(), State::Down);
    assert_eq!(
        h.record_check(true, true, "", 2, 2),
        vec![Transition::CheckUp]
    );
    assert!(h.eligible());
}

fn reports(n: usize, reason: &str) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("g{i}"), reason.to_string()))
        .collect()
}

#[test]
fn fleet_quorum_ejects_with_reason_fleet_until_reports_drop() {
    let h = Health::new(&entry(3), &BreakerConfig::default());
    assert!(h
        .fleet_view(reports(1, "timeout"), 2, true, true)
        .is_empty());
    assert!(h.eligible(), "below quorum");
    let t = h.fleet_view(reports(2, "timeout"), 2, true, true);
    assert!(matches!(&t[0], Transition::Ejected { reason, .. } if reason == "fleet"));
    assert_eq!(h.state(), State::Ejected);
    assert_eq!(h.ejection_reason(), Some("fleet"));
    assert_eq!(h.fleet_down().len(), 2);
    assert!(
        h.own_verdict().usable,
        "the fleet is not this gateway's verdict"
    );
    assert_eq!(
        h.fleet_view(reports(1, "timeout"), 2, false, true),
        vec![Transition::Reinstated]
    );
    assert!(h.eligible());
    // The pool's ejection cap holds for the fleet too.
    assert!(h
        .fleet_view(reports(2, "timeout"), 2, true, false)
        .is_empty());
    assert!(h.eligible());
}

#[test]
fn own_success_overrides_until_a_fresh_report() {
    let h = Health::new(&entry(3), &BreakerConfig::default());
    h.fleet_view(reports(1, "refused"), 1, true, true);
    assert!(!h.eligible());
    let t = h.record_success(Duration::from_millis(1));
    assert!(t.contains(&Transition::Reinstated), "{t:?}");
    assert!(h.eligible());
    // The same reports again (another gateway's up, a resync) change nothing.
    assert!(h
        .fleet_view(reports(1, "refused"), 1, false, true)
        .is_empty());
    assert!(h.eligible());
    // A fresh down report ejects again.
    assert!(!h
        .fleet_view(reports(1, "refused"), 1, true, true)
        .is_empty());
    assert!(!h.eligible());
}

#[test]
fn checks_lift_a_fleet_ejection_only_when_they_can_vouch() {
    let h = Health::new(&entry(3), &BreakerConfig::default());
    h.fleet_view(reports(1, "proxy_error"), 1, true, true);
    h.record_check(true, false, "OPTIONS ok", 1, 1);
    assert!(
        !h.eligible(),
        "a shallow check cannot vouch for a proxy error"
    );
    h.record_check(true, true, "tunnel ok", 1, 1);
    assert!(h.eligible(), "a deep check can");
    h.fleet_view(reports(1, "timeout"), 1, true, true);
    h.record_check(true, false, "OPTIONS ok", 1, 1);
    assert!(h.eligible(), "a shallow check vouches for a timeout");
}

#[test]
fn publishes_own_down_and_up_only_on_evidence() {
    let h = Health::new(&entry(1), &BreakerConfig::default());
    let mut sent = Vec::new();
    h.fleet_publish(|d, r| sent.push((d, r)));
    assert!(sent.is_empty(), "nothing to say while healthy");
    // A fleet ejection is never published as this gateway's verdict.
    h.fleet_view(reports(1, "timeout"), 1, true, true);
    h.fleet_publish(|d, r| sent.push((d, r)));
    assert!(sent.is_empty());
    h.fleet_view(Vec::new(), 1, false, true);
    h.record_failure(&refused(), true, Duration::from_millis(40));
    h.fleet_publish(|d, r| sent.push((d, r)));
    h.fleet_publish(|d, r| sent.push((d, r)));
    assert_eq!(sent, vec![(true, "refused")], "once per change");
    std::thread::sleep(Duration::from_millis(60));
    assert!(h.eligible(), "the ejection expired");
    h.fleet_publish(|d, r| sent.push((d, r)));
    assert_eq!(sent.len(), 1, "expiry alone is no evidence");
    h.record_success(Duration::from_millis(1));
    h.fleet_publish(|d, r| sent.push((d, r)));
    assert_eq!(sent[1], (false, "ok"));
}
