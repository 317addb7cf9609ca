//! The `/status` document and the per-upstream history behind the sparklines.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::pool::{Member, Pool};
use crate::reverse::ReverseRoute;
use crate::route::Router;

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One history sample (every [`SAMPLE_EVERY`]).
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t: u64,
    pub latency_ms: Option<f64>,
    pub ok: u64,
    pub errors: u64,
}

pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
const KEEP: usize = 300; // ten minutes

/// Last seen counters (ok, errors) and the samples of one upstream.
type Series = (u64, u64, VecDeque<Sample>);

#[derive(Default)]
pub struct History {
    per: Mutex<HashMap<String, Series>>,
}

impl History {
    /// Takes one sample of every member of `pools` (upstreams and backends).
    pub fn sample<'a>(&self, pools: impl IntoIterator<Item = &'a Pool>) {
        let now = unix_ms(SystemTime::now());
        let Ok(mut per) = self.per.lock() else { return };
        let members: Vec<_> = pools
            .into_iter()
            .flat_map(|p| p.members().iter().cloned().collect::<Vec<_>>())
            .collect();
        // Members removed by a reload or discovery leave the history.
        let live: std::collections::HashSet<&str> = members.iter().map(|m| m.name()).collect();
        per.retain(|name, _| live.contains(name.as_str()));
        for m in members {
            let ok = m.health.successes.load(Ordering::Relaxed);
            let err = m.health.failures.load(Ordering::Relaxed);
            let e = per
                .entry(m.name().to_string())
                .or_insert((ok, err, VecDeque::new()));
            let s = Sample {
                t: now,
                latency_ms: m.health.ewma().map(|d| d.as_secs_f64() * 1000.0),
                ok: ok.saturating_sub(e.0),
                errors: err.saturating_sub(e.1),
            };
            e.0 = ok;
            e.1 = err;
            if e.2.len() == KEEP {
                e.2.pop_front();
            }
            e.2.push_back(s);
        }
    }

    pub fn of(&self, name: &str) -> Vec<Sample> {
        self.per
            .lock()
            .ok()
            .and_then(|p| p.get(name).map(|e| e.2.iter().cloned().collect()))
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LastError {
    pub time_ms: u64,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastCheck {
    pub time_ms: u64,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpstreamStatus {
    pub name: String,
    pub url: String,
    pub zone: Option<String>,
    pub priority: i32,
    /// Where the member came from: config, dns, etcd, file, env or route.
    pub source: String,
    /// healthy | ejected | down | breaker_open | half_open
    pub state: String,
    pub breaker: String,
    pub ewma_ms: Option<f64>,
    pub successes: u64,
    pub failures: u64,
    pub last_error: Option<LastError>,
    pub last_check: Option<LastCheck>,
    pub history: Vec<Sample>,
    /// Reverse-route backends: the protocol spoken now (`http1`, `h2c`,
    /// `h2`, `https` before ALPN, `http1 (fallback)`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Why it is ejected (`timeout`, `refused`, `auth`, ..., or `fleet`).
    pub ejection_reason: Option<String>,
    /// Other gateways of the fleet reporting it down (`[fleet]`).
    pub fleet_down: Vec<FleetReport>,
    /// Idle lifetime of its pooled connections learnt from a connection cut
    /// on the path (`null`: none seen; `[pool] upstream_idle` applies).
    pub idle_limit_ms: Option<u64>,
}

/// One other gateway's down report about an upstream.
#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub gateway: String,
    pub reason: String,
}

/// One reverse-mode route and its backends.
#[derive(Debug, Clone, Serialize)]
pub struct RouteStatus {
    /// The address the route listens on.
    pub listen: String,
    pub local_zone: Option<String>,
    /// `direct` or `pool`.
    pub via: String,
    /// True while at least one backend may take traffic.
    pub can_serve: bool,
    pub backends: Vec<UpstreamStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolCounters {
    pub retries: u64,
    pub failovers: u64,
    pub races_started: u64,
    pub races_won_by_later: u64,
    pub degraded_direct: u64,
    pub ejections: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub version: String,
    pub uptime_s: u64,
    pub listeners: Vec<String>,
    pub strategy: String,
    /// True while at least one route can serve (what /healthz reports).
    pub can_serve: bool,
    pub upstreams: Vec<UpstreamStatus>,
    /// Reverse-mode routes (empty without `[[route]]`).
    pub routes: Vec<RouteStatus>,
    pub counters: PoolCounters,
    pub events: Vec<crate::events::Event>,
    /// `[[discovery]]` sources (empty without any).
    pub discovery: Vec<crate::discovery::SourceStatus>,
}

fn member_status(m: &Member, history: &History) -> UpstreamStatus {
    UpstreamStatus {
        name: m.name().to_string(),
        url: m.spec().redacted_url(),
        zone: m.entry.zone.clone(),
        priority: m.entry.priority,
        source: crate::discovery::source_of(&m.entry.origin).to_string(),
        state: m.health.state().as_str().to_string(),
        breaker: m.health.breaker_state().as_str().to_string(),
        ewma_ms: m
            .health
            .ewma()
            .map(|d| (d.as_secs_f64() * 1e6).round() / 1e3),
        successes: m.health.successes.load(Ordering::Relaxed),
        failures: m.health.failures.load(Ordering::Relaxed),
        last_error: m.health.last_error().map(|(t, e)| LastError {
            time_ms: unix_ms(t),
            message: e,
        }),
        last_check: m.health.last_check().map(|(t, ok, d)| LastCheck {
            time_ms: unix_ms(t),
            ok,
            detail: d,
        }),
        history: history.of(m.name()),
        protocol: None,
        ejection_reason: m.health.ejection_reason().map(str::to_string),
        fleet_down: m
            .health
            .fleet_down()
            .into_iter()
            .map(|(gateway, reason)| FleetReport { gateway, reason })
            .collect(),
        idle_limit_ms: m.idle_cut.learnt().map(|d| d.as_millis() as u64),
    }
}

fn route_status(listen: SocketAddr, r: &ReverseRoute, history: &History) -> RouteStatus {
    let members = r.pool().members();
    let cfg = r.config();
    RouteStatus {
        listen: listen.to_string(),
        local_zone: cfg.local_zone.clone(),
        via: cfg.via.clone(),
        can_serve: members.iter().any(|m| m.health.eligible()),
        backends: members
            .iter()
            .map(|m| UpstreamStatus {
                protocol: Some(r.backend_protocol(m).to_string()),
                ..member_status(m, history)
            })
            .collect(),
    }
}

/// The admin API's view of the gateway: upstreams, reverse routes, counters.
pub fn build(
    router: &Router,
    routes: &[(SocketAddr, Arc<ReverseRoute>)],
    history: &History,
    started: Instant,
    listeners: &[String],
) -> Status {
    let cfg = router.pool.config();
    let members = router.pool.members();
    let upstreams: Vec<UpstreamStatus> =
        members.iter().map(|m| member_status(m, history)).collect();
    let can_serve = members.is_empty()
        || members
            .iter()
            .any(|m| m.health.eligible() || m.spec().is_direct())
        || cfg.fallback == crate::config::schema::Fallback::Direct;
    let s = &router.pool.stats;
    Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_s: started.elapsed().as_secs(),
        listeners: listeners.to_vec(),
        strategy: format!("{:?}", cfg.strategy).to_ascii_lowercase(),
        can_serve,
        upstreams,
        routes: routes
            .iter()
            .map(|(a, r)| route_status(*a, r, history))
            .collect(),
        counters: PoolCounters {
            retries: s.retries.load(Ordering::Relaxed),
            failovers: s.failovers.load(Ordering::Relaxed),
            races_started: s.races_started.load(Ordering::Relaxed),
            races_won_by_later: s.races_won_by_later.load(Ordering::Relaxed),
            degraded_direct: s.degraded_direct.load(Ordering::Relaxed),
            ejections: s.ejections.load(Ordering::Relaxed),
        },
        events: router.pool.events.recent(),
        discovery: router.pool.discovery_status(),
    }
}
