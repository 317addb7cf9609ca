//! Per-upstream health: passive outlier detection (nginx `max_fails` within
//! `fail_timeout`, Envoy-style growing ejection), a circuit breaker
//! (gobreaker-like closed → open → half-open), active check state (rise/fall)
//! and latency (EWMA and recent samples for adaptive racing).
//!
//! All state sits behind one short `Mutex` that is never held across `.await`.
//! What changes it is visible to the pool only: outcomes come in through
//! `Pool::report` (pool/outcome.rs).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::config::schema::BreakerConfig;
use crate::config::UpstreamEntry;
use crate::upstream::{ConnectError, FaultClass};

mod fleet;
pub use fleet::OwnVerdict;

/// Circuit breaker state, as reported on the status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// Overall state of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Healthy,
    /// Passively ejected (failures of real connections) until a time.
    Ejected,
    /// Active checks say it is down (`fall` consecutive failures).
    Down,
    BreakerOpen,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Ejected => "ejected",
            State::Down => "down",
            State::BreakerOpen => "breaker_open",
            State::HalfOpen => "half_open",
        }
    }
}

/// A health transition worth logging, alerting and showing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Ejected { until_ms: u64, reason: String },
    Reinstated,
    BreakerOpened,
    BreakerHalfOpen,
    BreakerClosed,
    CheckDown,
    CheckUp,
}

#[derive(Debug)]
struct Inner {
    fails: VecDeque<Instant>,
    ejected_until: Option<Instant>,
    ejections: u32,
    breaker: BreakerState,
    breaker_since: Instant,
    consecutive_fails: u32,
    half_open_in_flight: u32,
    window: VecDeque<(Instant, bool)>,
    check_up: bool,
    check_ok_streak: u32,
    check_fail_streak: u32,
    last_check: Option<(SystemTime, bool, String)>,
    last_error: Option<(SystemTime, String, FaultClass)>,
    samples: VecDeque<Duration>,
    last_used: Option<Instant>,
    /// The fault behind the current ejection / open breaker: a shallow check
    /// (TCP + greeting) may only lift connection-level faults.
    trip_fault: Option<FaultClass>,
    trip_shallow_ok: bool,
    /// Time-based transitions seen by read-only calls, handed to the next
    /// caller that reports transitions (so none goes unlogged).
    pending: Vec<Transition>,
    /// Reason label of the last failure (what an ejection is published as).
    trip_reason: &'static str,
    /// A success or passing check came after the last failure (evidence
    /// that lets this gateway publish the upstream as up again).
    good_since_fail: bool,
    /// What the other gateways of the fleet report (health/fleet.rs).
    fleet: fleet::Mark,
}

#[derive(Debug)]
pub struct Health {
    inner: Mutex<Inner>,
    max_fails: u32,
    fail_timeout: Duration,
    breaker_cfg: BreakerConfig,
    pub successes: AtomicU64,
    pub failures: AtomicU64,
    /// EWMA of connect+handshake latency in microseconds (0 = no data).
    ewma_us: AtomicU64,
    /// Woken on ejection (tunnels drain on it with `drain_on_eject`).
    ejected: tokio::sync::Notify,
    /// What was last announced (`upstream_down` sent and not yet `upstream_up`).
    announced_down: std::sync::atomic::AtomicBool,
    /// What this gateway last published to the fleet (held while sending).
    published: Mutex<fleet::Published>,
}

const SAMPLES: usize = 64;

impl Health {
    pub fn new(entry: &UpstreamEntry, breaker: &BreakerConfig) -> Self {
        Health {
            inner: Mutex::new(Inner {
                fails: VecDeque::new(),
                ejected_until: None,
                ejections: 0,
                breaker: BreakerState::Closed,
                breaker_since: Instant::now(),
                consecutive_fails: 0,
                half_open_in_flight: 0,
                window: VecDeque::new(),
                check_up: true,
                check_ok_streak: 0,
                check_fail_streak: 0,
                last_check: None,
                last_error: None,
                samples: VecDeque::with_capacity(SAMPLES),
                last_used: None,
                trip_fault: None,
                trip_shallow_ok: true,
                pending: Vec::new(),
                trip_reason: "error",
                good_since_fail: false,
                fleet: fleet::Mark::default(),
            }),
            max_fails: entry.max_fails.max(1),
            fail_timeout: entry.fail_timeout,
            breaker_cfg: breaker.clone(),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            ewma_us: AtomicU64::new(0),
            ejected: tokio::sync::Notify::new(),
            announced_down: std::sync::atomic::AtomicBool::new(false),
            published: Mutex::new(fleet::Published::Nothing),
        }
    }

    /// Records whether the upstream is usable now; `Some(usable)` when that
    /// changes what was last announced (so each outage is announced once).
    pub(in crate::pool) fn announce(&self, usable: bool) -> Option<bool> {
        let was_down = self.announced_down.swap(!usable, Ordering::Relaxed);
        (was_down == usable).then_some(usable)
    }

    /// False while active checks say the upstream is down.
    pub fn check_passing(&self) -> bool {
        self.lock().check_up
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere; the data is plain counters.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Advances time-based transitions (ejection expiry, breaker open → half-open).
    fn tick(&self, g: &mut Inner, now: Instant, out: &mut Vec<Transition>) {
        if let Some(until) = g.ejected_until {
            if now >= until {
                g.ejected_until = None;
                g.fails.clear();
                out.push(Transition::Reinstated);
            }
        }
        if g.breaker == BreakerState::Open
            && now.duration_since(g.breaker_since) >= self.breaker_cfg.open_for.0
        {
            g.breaker = BreakerState::HalfOpen;
            g.breaker_since = now;
            g.half_open_in_flight = 0;
            out.push(Transition::BreakerHalfOpen);
        }
    }

    pub fn state(&self) -> State {
        let mut g = self.lock();
        let mut t = Vec::new();
        self.tick(&mut g, Instant::now(), &mut t);
        g.pending.extend(t);
        Self::state_of(&g)
    }

    /// The state, with a fleet ejection on top of this gateway's own view.
    fn state_of(g: &Inner) -> State {
        match Self::own_state_of(g) {
            State::Healthy | State::HalfOpen if g.fleet.ejected() => State::Ejected,
            own => own,
        }
    }

    /// The state from this gateway's own observations only.
    fn own_state_of(g: &Inner) -> State {
        if g.breaker == BreakerState::Open {
            State::BreakerOpen
        } else if g.ejected_until.is_some() {
            State::Ejected
        } else if !g.check_up {
            State::Down
        } else if g.breaker == BreakerState::HalfOpen {
            State::HalfOpen
        } else {
            State::Healthy
        }
    }

    pub fn breaker_state(&self) -> BreakerState {
        let mut g = self.lock();
        let mut t = Vec::new();
        self.tick(&mut g, Instant::now(), &mut t);
        g.pending.extend(t);
        g.breaker
    }

    /// True when new connections may use this upstream now. In half-open, it
    /// takes one of the limited trial slots (release with a report).
    pub(in crate::pool) fn try_admit(&self) -> (bool, Vec<Transition>) {
        let mut g = self.lock();
        let mut t = std::mem::take(&mut g.pending);
        let now = Instant::now();
        self.tick(&mut g, now, &mut t);
        let ok = match Self::state_of(&g) {
            State::Healthy => true,
            State::HalfOpen if g.half_open_in_flight < self.breaker_cfg.half_open_trials => {
                g.half_open_in_flight += 1;
                true
            }
            _ => false,
        };
        if ok {
            g.last_used = Some(now);
        }
        (ok, t)
    }

    /// Whether the upstream is eligible without taking a trial slot.
    pub fn eligible(&self) -> bool {
        matches!(self.state(), State::Healthy | State::HalfOpen)
    }

    /// When the upstream becomes eligible again (for choosing the least bad).
    pub fn available_at(&self) -> Instant {
        let g = self.lock();
        let mut at = Instant::now();
        if let Some(u) = g.ejected_until {
            at = at.max(u);
        }
        if g.breaker == BreakerState::Open {
            at = at.max(g.breaker_since + self.breaker_cfg.open_for.0);
        }
        at
    }

    pub(in crate::pool) fn record_success(&self, took: Duration) -> Vec<Transition> {
        self.successes.fetch_add(1, Ordering::Relaxed);
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        let old = self.ewma_us.load(Ordering::Relaxed);
        // EWMA with alpha 0.3: reacts within a few connections, smooths noise.
        let new = if old == 0 {
            us
        } else {
            (old * 7 + us * 3) / 10
        };
        self.ewma_us.store(new.max(1), Ordering::Relaxed);
        let mut g = self.lock();
        let now = Instant::now();
        let mut t = std::mem::take(&mut g.pending);
        self.tick(&mut g, now, &mut t);
        if g.samples.len() == SAMPLES {
            g.samples.pop_front();
        }
        g.samples.push_back(took);
        g.consecutive_fails = 0;
        g.ejections = 0;
        g.good_since_fail = true;
        if g.fleet.lift(true) {
            t.push(Transition::Reinstated);
        }
        self.push_window(&mut g, now, true);
        if g.breaker == BreakerState::HalfOpen {
            g.breaker = BreakerState::Closed;
            g.breaker_since = now;
            g.half_open_in_flight = 0;
            g.window.clear();
            t.push(Transition::BreakerClosed);
        }
        t
    }

    fn push_window(&self, g: &mut Inner, now: Instant, ok: bool) {
        g.window.push_back((now, ok));
        let w = self.breaker_cfg.window.0;
        while g
            .window
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > w)
        {
            g.window.pop_front();
        }
    }

    /// Records a failure of a real connection. `may_eject` is false when the
    /// pool's ejection cap is reached.
    pub(in crate::pool) fn record_failure(
        &self,
        err: &ConnectError,
        may_eject: bool,
        base_ejection: Duration,
    ) -> Vec<Transition> {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut g = self.lock();
        let mut t = std::mem::take(&mut g.pending);
        self.tick(&mut g, now, &mut t);
        g.last_error = Some((SystemTime::now(), err.to_string(), err.fault()));
        g.trip_fault = Some(err.fault());
        g.trip_shallow_ok = connection_level(err);
        g.trip_reason = reason_label(err);
        g.good_since_fail = false;
        g.consecutive_fails += 1;
        self.push_window(&mut g, now, false);
        // Breaker.
        match g.breaker {
            BreakerState::HalfOpen => {
                g.breaker = BreakerState::Open;
                g.breaker_since = now;
                g.half_open_in_flight = 0;
                t.push(Transition::BreakerOpened);
            }
            BreakerState::Closed => {
                let by_count = g.consecutive_fails >= self.breaker_cfg.failure_threshold;
                let total = g.window.len() as u32;
                let failed = g.window.iter().filter(|(_, ok)| !ok).count() as f64;
                let by_ratio = self.breaker_cfg.failure_ratio > 0.0
                    && total >= self.breaker_cfg.min_requests
                    && failed / f64::from(total.max(1)) >= self.breaker_cfg.failure_ratio;
                if by_count || by_ratio {
                    g.breaker = BreakerState::Open;
                    g.breaker_since = now;
                    t.push(Transition::BreakerOpened);
                }
            }
            BreakerState::Open => {}
        }
        // Passive ejection: max_fails within fail_timeout (nginx semantics).
        g.fails.push_back(now);
        let ft = self.fail_timeout;
        while g.fails.front().is_some_and(|f| now.duration_since(*f) > ft) {
            g.fails.pop_front();
        }
        // Auth/policy faults are configuration errors: eject at once.
        let immediate = matches!(err.fault(), FaultClass::Auth | FaultClass::Policy);
        if g.ejected_until.is_none()
            && may_eject
            && (immediate || g.fails.len() as u32 >= self.max_fails)
        {
            g.ejections = g.ejections.saturating_add(1);
            // Envoy style: base × consecutive ejections, capped at 10 minutes.
            let d = (base_ejection * g.ejections.min(60)).min(Duration::from_secs(600));
            g.ejected_until = Some(now + d);
            t.push(Transition::Ejected {
                until_ms: d.as_millis() as u64,
                reason: reason_label(err).to_string(),
            });
            drop(g);
            self.ejected.notify_waiters();
        }
        t
    }

    /// Resolves when this upstream is next ejected.
    pub async fn ejection(&self) {
        self.ejected.notified().await
    }

    /// Releases a half-open trial slot without a verdict (attempt cancelled).
    pub(in crate::pool) fn release_trial(&self) {
        let mut g = self.lock();
        if g.breaker == BreakerState::HalfOpen && g.half_open_in_flight > 0 {
            g.half_open_in_flight -= 1;
        }
    }

    /// Records an active check result; `rise` successes bring it up (and lift
    /// an ejection), `fall` failures take it down.
    /// `deep` says the check went through the proxy handshake to a target
    /// (or fetched a URL); a shallow one cannot vouch for auth or proxy errors.
    pub(in crate::pool) fn record_check(
        &self,
        ok: bool,
        deep: bool,
        detail: &str,
        rise: u32,
        fall: u32,
    ) -> Vec<Transition> {
        let mut g = self.lock();
        let now = Instant::now();
        let mut t = std::mem::take(&mut g.pending);
        self.tick(&mut g, now, &mut t);
        g.last_check = Some((SystemTime::now(), ok, detail.to_string()));
        if ok {
            g.check_fail_streak = 0;
            g.check_ok_streak += 1;
            if g.check_ok_streak >= rise {
                if !g.check_up {
                    g.check_up = true;
                    t.push(Transition::CheckUp);
                }
                g.good_since_fail = true;
                if g.fleet.lift(deep) {
                    t.push(Transition::Reinstated);
                }
                let vouches = deep || g.trip_shallow_ok;
                if vouches && g.ejected_until.take().is_some() {
                    g.fails.clear();
                    t.push(Transition::Reinstated);
                }
                if vouches && g.breaker == BreakerState::Open {
                    g.breaker = BreakerState::HalfOpen;
                    g.breaker_since = now;
                    g.half_open_in_flight = 0;
                    t.push(Transition::BreakerHalfOpen);
                }
            }
        } else {
            g.check_ok_streak = 0;
            g.check_fail_streak += 1;
            g.good_since_fail = false;
            if g.check_fail_streak >= fall && g.check_up {
                g.check_up = false;
                t.push(Transition::CheckDown);
            }
        }
        t
    }

    /// EWMA latency, if any connection succeeded yet.
    pub fn ewma(&self) -> Option<Duration> {
        match self.ewma_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Recent latency samples (for the pool's adaptive `race_after`).
    pub fn samples(&self) -> Vec<Duration> {
        self.lock().samples.iter().copied().collect()
    }

    pub fn last_error(&self) -> Option<(SystemTime, String)> {
        self.lock()
            .last_error
            .as_ref()
            .map(|(t, e, _)| (*t, e.clone()))
    }

    pub fn last_check(&self) -> Option<(SystemTime, bool, String)> {
        self.lock().last_check.clone()
    }

    pub fn is_ejected(&self) -> bool {
        self.state() == State::Ejected
    }

    /// Used recently (for lazy checks).
    pub fn used_within(&self, d: Duration) -> bool {
        self.lock().last_used.is_some_and(|u| u.elapsed() <= d)
    }
}

/// Faults a plain TCP (+TLS, +SOCKS greeting) probe would also see.
fn connection_level(err: &ConnectError) -> bool {
    matches!(
        err,
        ConnectError::Refused { .. }
            | ConnectError::Timeout { .. }
            | ConnectError::Unreachable { .. }
            | ConnectError::Reset { .. }
            | ConnectError::Dns { .. }
            | ConnectError::Io { .. }
    )
}

/// Whether the breaker is open right now (callers fail fast on it).
impl Health {
    pub fn breaker_open(&self) -> bool {
        self.breaker_state() == BreakerState::Open
    }
}

/// A short reason label: dead vs auth vs policy, distinct in logs and alerts.
pub fn reason_label(err: &ConnectError) -> &'static str {
    match err.fault() {
        FaultClass::Auth => "auth",
        FaultClass::Policy => "acl",
        _ => match err {
            ConnectError::Timeout { .. } => "timeout",
            ConnectError::Refused { .. } => "refused",
            ConnectError::Reset { .. } => "reset",
            ConnectError::ProxyStatus { .. } | ConnectError::SocksReply { .. } => "proxy_error",
            ConnectError::ProxyProtocol { .. } => "protocol",
            ConnectError::Dns { .. } => "dns",
            ConnectError::Tls { .. } => "tls",
            _ => "error",
        },
    }
}

#[cfg(test)]
mod tests;
