//! The upstream pool: the set of upstreams (replaceable at run time, for
//! reload and discovery), their health, the strategy that orders candidates,
//! and the reporting of outcomes back into health (`outcome.rs`, the one
//! entry point).

pub mod attempt;
pub mod backoff;
pub mod body_suspects;
pub mod checker;
pub mod fleet;
#[cfg(test)]
mod follow_tests;
pub mod health;
pub mod idle_cut;
pub mod outcome;
pub mod strategy;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::adaptive::{from_samples, Adaptive};
use crate::config::schema::{BreakerConfig, PoolConfig};
use crate::config::{Applies, UpstreamEntry};
use crate::upstream::{Target, UpstreamSpec};

pub use health::{Health, State, Transition};
pub use outcome::Outcome;

/// One upstream in the pool with its health state. A member's identity is
/// its whole entry: a reload that changes any setting makes a new member
/// (fresh health, new connections); an unchanged entry keeps its member.
#[derive(Debug)]
pub struct Member {
    pub entry: UpstreamEntry,
    pub health: Health,
    /// Unique for the life of the process: keys pooled connections, so a
    /// socket opened for one member is never reused by another.
    pub id: u64,
    /// The idle lifetime of its pooled connections, learnt from failed reuse.
    pub idle_cut: idle_cut::IdleCut,
}

static NEXT_MEMBER_ID: AtomicU64 = AtomicU64::new(1);

impl Member {
    pub fn new(entry: UpstreamEntry, breaker: &BreakerConfig) -> Arc<Member> {
        Arc::new(Member {
            health: Health::new(&entry, breaker),
            entry,
            id: NEXT_MEMBER_ID.fetch_add(1, Ordering::Relaxed),
            idle_cut: Default::default(),
        })
    }

    pub fn spec(&self) -> &UpstreamSpec {
        &self.entry.spec
    }
    pub fn name(&self) -> &str {
        &self.entry.spec.name
    }
}

/// `[pool]` as the request path reads it: parsed once per load.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_attempts: usize,
    pub connect_deadline: Duration,
    pub race_after: Adaptive,
    pub hedge_after: Adaptive,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub target_fail_cache: Duration,
    /// Pooled connections to an upstream are retired after this idle time.
    pub upstream_idle: Duration,
}

impl From<&PoolConfig> for Settings {
    fn from(c: &PoolConfig) -> Self {
        Settings {
            max_attempts: c.max_attempts.max(1) as usize,
            connect_deadline: c.connect_deadline.0,
            // Validated at load; an unparsable value cannot get here.
            race_after: Adaptive::parse(&c.race_after).unwrap_or(Adaptive::Auto),
            hedge_after: Adaptive::parse(&c.hedge_after).unwrap_or(Adaptive::Off),
            backoff_base: c.backoff_base.0,
            backoff_cap: c.backoff_cap.0,
            target_fail_cache: c.target_fail_cache.0,
            upstream_idle: c.upstream_idle.0,
        }
    }
}

/// What kind of traffic asks for candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    Plain,
    Tunnel,
}

impl Traffic {
    fn applies(self, a: Applies) -> bool {
        match self {
            Traffic::Plain => a.plain,
            Traffic::Tunnel => a.tunnel,
        }
    }
}

/// Counters the pool keeps (metrics read them).
#[derive(Debug, Default)]
pub struct PoolStats {
    pub retries: AtomicU64,
    pub failovers: AtomicU64,
    pub races_started: AtomicU64,
    pub races_won_by_later: AtomicU64,
    pub degraded_direct: AtomicU64,
    pub ejections: AtomicU64,
}

/// The candidates for one connection.
pub struct Plan {
    /// Eligible upstreams, best first.
    pub members: Vec<Arc<Member>>,
    /// True when nothing was eligible and `fallback = "direct"` applies.
    pub degrade_direct: bool,
    /// True when every upstream's circuit breaker is open: fail fast.
    pub breakers_open: bool,
}

/// What a reload or a discovery round replaces, swapped as one: whoever
/// reads the members and the settings from one `load()` sees one version.
/// Health lives in the members, so it is not part of the swap.
pub struct Snapshot {
    pub members: Arc<Vec<Arc<Member>>>,
    pub settings: Arc<Settings>,
    pub cfg: Arc<PoolConfig>,
    pub breaker: Arc<BreakerConfig>,
}

/// The upstream set. Cheap to read from any task.
pub struct Pool {
    snap: ArcSwap<Snapshot>,
    rr: AtomicUsize,
    leader: Mutex<Option<String>>,
    ejecting: Mutex<()>,
    pub stats: PoolStats,
    pub events: Arc<crate::events::EventBus>,
    all_down: std::sync::atomic::AtomicBool,
    degraded: std::sync::atomic::AtomicBool,
    /// Where this gateway's own verdicts go with `[fleet]` (pool/fleet.rs).
    fleet_sink: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<fleet::Verdict>>,
    /// Static and discovered entries, composed into `members`.
    sets: crate::discovery::Sets,
}

impl Pool {
    pub fn new(entries: Vec<UpstreamEntry>, cfg: PoolConfig, breaker: BreakerConfig) -> Self {
        let sets = crate::discovery::Sets::new(entries.clone());
        let members = entries
            .into_iter()
            .map(|entry| Member::new(entry, &breaker))
            .collect();
        Pool {
            snap: ArcSwap::from_pointee(Snapshot {
                members: Arc::new(members),
                settings: Arc::new(Settings::from(&cfg)),
                cfg: Arc::new(cfg),
                breaker: Arc::new(breaker),
            }),
            rr: AtomicUsize::new(0),
            leader: Mutex::new(None),
            ejecting: Mutex::new(()),
            stats: PoolStats::default(),
            events: Arc::new(crate::events::EventBus::new()),
            all_down: std::sync::atomic::AtomicBool::new(false),
            degraded: std::sync::atomic::AtomicBool::new(false),
            fleet_sink: std::sync::OnceLock::new(),
            sets,
        }
    }

    /// A snapshot of all members.
    pub fn members(&self) -> Arc<Vec<Arc<Member>>> {
        self.snap.load().members.clone()
    }

    pub fn config(&self) -> Arc<PoolConfig> {
        self.snap.load().cfg.clone()
    }

    /// Replaces the static upstream set (reload); discovered members stay.
    /// A member whose whole entry is unchanged (and the `[breaker]` settings
    /// too) keeps its health and counters; any other is new, so every
    /// changed setting applies and its pooled connections are never reused.
    /// Requests already holding a replaced member finish on it (the old
    /// snapshot lives while used).
    pub fn replace(&self, entries: Vec<UpstreamEntry>, cfg: PoolConfig, breaker: BreakerConfig) {
        self.sets
            .set_config(entries, |all| self.store(all, cfg, breaker));
    }

    /// Replaces the set one discovery source contributes (`id` as in
    /// `[[discovery]]`), by the same identity rule as [`Pool::replace`].
    pub fn set_source(&self, id: &str, kind: &'static str, entries: Vec<UpstreamEntry>) {
        self.sets.set_source(id, kind, entries, |all| {
            let now = self.snap.load();
            let (cfg, breaker) = ((*now.cfg).clone(), (*now.breaker).clone());
            self.store(all, cfg, breaker)
        });
    }

    /// Records a discovery source's health (its last error, if failing).
    pub fn note_source(&self, id: &str, kind: &'static str, error: Option<String>) {
        self.sets.note(id, kind, error);
    }

    /// Every discovery source's status, in config order.
    pub fn discovery_status(&self) -> Vec<crate::discovery::SourceStatus> {
        self.sets.status()
    }

    fn store(&self, entries: Vec<UpstreamEntry>, cfg: PoolConfig, breaker: BreakerConfig) {
        let now = self.snap.load_full();
        let (old, same_breaker) = (&now.members, *now.breaker == breaker);
        let members: Vec<Arc<Member>> = entries
            .into_iter()
            .map(
                |entry| match old.iter().find(|m| same_breaker && m.entry == entry) {
                    Some(m) => m.clone(),
                    None => Member::new(entry, &breaker),
                },
            )
            .collect();
        self.snap.store(Arc::new(Snapshot {
            members: Arc::new(members),
            settings: Arc::new(Settings::from(&cfg)),
            cfg: Arc::new(cfg),
            breaker: Arc::new(breaker),
        }));
    }

    /// The typed settings the request path reads.
    pub fn settings(&self) -> Arc<Settings> {
        self.snap.load().settings.clone()
    }

    /// The attempt budget for one connection now.
    pub fn budget(&self) -> attempt::Budget {
        let s = self.settings();
        attempt::Budget {
            max_attempts: s.max_attempts,
            deadline: s.connect_deadline,
            race_after: self.race_after(),
            backoff_base: s.backoff_base,
            backoff_cap: s.backoff_cap,
        }
    }

    /// Orders the candidates for one connection to `target`.
    pub fn plan(&self, target: &Target, traffic: Traffic) -> Plan {
        let snap = self.snap.load_full();
        let (cfg, all) = (&snap.cfg, &snap.members);
        let serving: Vec<Arc<Member>> = all
            .iter()
            .filter(|m| traffic.applies(m.entry.applies))
            .cloned()
            .collect();
        let mut eligible = eligible(&serving);
        if eligible.is_empty() {
            if serving.is_empty() {
                return Plan {
                    members: Vec::new(),
                    degrade_direct: false,
                    breakers_open: false,
                };
            }
            if cfg.fallback == crate::config::schema::Fallback::Direct {
                self.stats.degraded_direct.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("proxyguard_degraded_direct_total").increment(1);
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    self.events.emit(
                        "degraded",
                        None,
                        "every upstream is out: connecting directly",
                    );
                }
                return Plan {
                    members: Vec::new(),
                    degrade_direct: true,
                    breakers_open: false,
                };
            }
            let v = least_bad(serving);
            return Plan {
                breakers_open: v.is_empty(),
                members: v,
                degrade_direct: false,
            };
        }
        self.degraded.store(false, Ordering::Relaxed);
        let leader = self.leader.lock().ok().and_then(|g| g.clone());
        let new_leader = strategy::order(
            cfg.strategy,
            &mut eligible,
            target,
            self.rr.fetch_add(1, Ordering::Relaxed),
            cfg.latency_tolerance.0,
            leader.as_deref(),
        );
        if let Some(l) = new_leader {
            if let Ok(mut g) = self.leader.lock() {
                *g = Some(l);
            }
        }
        Plan {
            members: eligible,
            degrade_direct: false,
            breakers_open: false,
        }
    }

    /// Logs transitions, publishes them as events and keeps gauges current.
    ///
    /// `upstream_down` and `upstream_up` are about what clients get, not
    /// about which mechanism noticed: one `upstream_down` when the upstream
    /// stops being usable (ejection, failed checks or an open breaker,
    /// whichever comes first), one `upstream_up` when it is usable again
    /// *and* its last health check passed — an ejection that merely expires
    /// while checks still fail is no recovery.
    fn transitions(&self, m: &Member, t: Vec<Transition>) {
        if t.is_empty() {
            return;
        }
        for tr in &t {
            let breaker = match tr {
                Transition::BreakerOpened => Some((
                    "breaker_open",
                    m.health.last_error().map(|e| e.1).unwrap_or_default(),
                )),
                Transition::BreakerHalfOpen => {
                    Some(("breaker_half_open", "trial connections allowed".to_string()))
                }
                Transition::BreakerClosed => {
                    Some(("breaker_closed", "trial succeeded".to_string()))
                }
                _ => None,
            };
            if let Some((kind, detail)) = breaker {
                self.events.emit(kind, Some(m.name()), detail);
            }
            if let Transition::Ejected { reason, .. } = tr {
                metrics::counter!("proxyguard_ejections_total", "upstream" => m.name().to_string(), "reason" => reason.clone()).increment(1);
            }
        }
        let usable = m.health.eligible() && m.health.check_passing();
        if let Some(now_up) = m.health.announce(usable) {
            if now_up {
                let why = if t.contains(&Transition::CheckUp) {
                    "health check passed"
                } else if t.contains(&Transition::BreakerClosed) {
                    "trial connection succeeded"
                } else {
                    "ejection ended and the last health check passed"
                };
                self.events
                    .emit("upstream_up", Some(m.name()), why.to_string());
            } else {
                let why = t
                    .iter()
                    .find_map(|tr| match tr {
                        Transition::Ejected { reason, .. } if reason == "fleet" => Some(format!(
                            "ejected (reason fleet): {} other gateways report it down",
                            m.health.fleet_down().len()
                        )),
                        Transition::Ejected { until_ms, reason } => Some(format!(
                            "ejected for {until_ms} ms (reason {reason}): {}",
                            m.health.last_error().map(|e| e.1).unwrap_or_default()
                        )),
                        Transition::CheckDown => Some(format!(
                            "health check failed: {}",
                            m.health.last_check().map(|c| c.2).unwrap_or_default()
                        )),
                        Transition::BreakerOpened => Some(format!(
                            "circuit breaker opened: {}",
                            m.health.last_error().map(|e| e.1).unwrap_or_default()
                        )),
                        _ => None,
                    })
                    .unwrap_or_else(|| "out of service".to_string());
                self.events.emit("upstream_down", Some(m.name()), why);
            }
        }
        let b = match m.health.breaker_state() {
            health::BreakerState::Closed => 0.0,
            health::BreakerState::HalfOpen => 1.0,
            health::BreakerState::Open => 2.0,
        };
        metrics::gauge!("proxyguard_upstream_breaker_state", "upstream" => m.name().to_string())
            .set(b);
        metrics::gauge!("proxyguard_upstream_up", "upstream" => m.name().to_string())
            .set(if usable { 1.0 } else { 0.0 });
        let members = self.members();
        let any = members.iter().any(|x| x.health.eligible());
        if !any && !members.is_empty() {
            if !self.all_down.swap(true, Ordering::Relaxed) {
                self.events.emit("all_down", None, "no upstream can serve");
            }
        } else {
            self.all_down.store(false, Ordering::Relaxed);
        }
        log_transitions(m, t);
        self.fleet_note(m);
    }

    /// The candidates of one reverse-route request: the eligible members in
    /// zone order ([`strategy::by_zone`]), else the least bad.
    pub fn plan_by_zone(
        &self,
        local: Option<&str>,
        busy: impl Fn(&Member) -> bool,
    ) -> Vec<Arc<Member>> {
        let all = self.members();
        let mut eligible = eligible(&all);
        if eligible.is_empty() {
            return least_bad(all.to_vec());
        }
        let k = self.rr.fetch_add(1, Ordering::Relaxed);
        strategy::by_zone(&mut eligible, local, k, busy);
        eligible
    }

    /// The delay before racing the next candidate: configured, or adaptive
    /// (3 × p90 of recent connect latencies, clamped to [50 ms, 1 s]).
    pub fn race_after(&self) -> Option<Duration> {
        self.settings().race_after.resolve(|| {
            let samples = self
                .members()
                .iter()
                .flat_map(|m| m.health.samples())
                .collect();
            from_samples(
                samples,
                0.9,
                3,
                Duration::from_millis(50),
                Duration::from_secs(1),
                Duration::from_millis(250),
            )
        })
    }
}

/// The members that may take new connections now.
fn eligible(members: &[Arc<Member>]) -> Vec<Arc<Member>> {
    members
        .iter()
        .filter(|m| m.health.eligible())
        .cloned()
        .collect()
}

/// Everything is out: keep trying the least bad rather than failing fast
/// (the one that comes back soonest, then by priority) — but an open
/// breaker means "fail fast" by definition, so those are left out.
fn least_bad(serving: Vec<Arc<Member>>) -> Vec<Arc<Member>> {
    let mut v: Vec<Arc<Member>> = serving
        .into_iter()
        .filter(|m| !m.health.breaker_open())
        .collect();
    v.sort_by_key(|m| (m.health.available_at(), m.entry.priority));
    v
}

/// A pool of `names` (each `http://127.0.0.1:9`, `max_fails` 1), for unit tests.
#[cfg(test)]
pub(crate) fn test_pool(names: &[&str], breaker: BreakerConfig) -> Pool {
    let entries = names
        .iter()
        .map(|n| UpstreamEntry {
            spec: UpstreamSpec::parse(n, "http://127.0.0.1:9").expect("test URL"),
            zone: None,
            priority: 0,
            weight: 1,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            applies: Applies::ALL,
            origin: "test".into(),
        })
        .collect();
    Pool::new(entries, PoolConfig::default(), breaker)
}

/// Logs health transitions (the event bus of the observability work hooks here).
pub fn log_transitions(m: &Member, t: Vec<Transition>) {
    for t in t {
        match t {
            Transition::Ejected { until_ms, reason } => tracing::warn!(
                upstream = m.name(),
                reason,
                ejected_ms = until_ms,
                last_error = m.health.last_error().map(|e| e.1).unwrap_or_default(),
                "upstream ejected"
            ),
            Transition::Reinstated => tracing::info!(upstream = m.name(), "upstream reinstated"),
            Transition::BreakerOpened => tracing::warn!(upstream = m.name(), "breaker opened"),
            Transition::BreakerHalfOpen => tracing::info!(upstream = m.name(), "breaker half-open"),
            Transition::BreakerClosed => tracing::info!(upstream = m.name(), "breaker closed"),
            Transition::CheckDown => tracing::warn!(
                upstream = m.name(),
                error = m.health.last_check().map(|c| c.2).unwrap_or_default(),
                "health check: down"
            ),
            Transition::CheckUp => tracing::info!(upstream = m.name(), "health check: up"),
        }
    }
}
