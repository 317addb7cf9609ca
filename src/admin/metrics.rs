//! Every metric family the gateway exports, with its `# HELP` text, and the
//! seeding that makes per-upstream and per-backend series exist from start
//! (a healthy upstream reports `proxyguard_upstream_up 1`, not nothing).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::pool::{health::BreakerState, Member, Pool};

/// The Prometheus type of a family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// (name, type, help) of every family. A unit test checks that each
/// `proxyguard_*` name used in the sources is listed here.
pub const FAMILIES: &[(&str, Kind, &str)] = &[
    (
        "proxyguard_discovery_members",
        Kind::Gauge,
        "Upstreams a [[discovery]] source contributes now (its last good set), by source kind and id.",
    ),
    (
        "proxyguard_discovery_errors_total",
        Kind::Counter,
        "Discovery source errors (unreachable, garbage, broken file), by source kind and id; a failure repeating unchanged counts once.",
    ),
    (
        "proxyguard_discovery_updates_total",
        Kind::Counter,
        "Changes of a [[discovery]] source's upstream set applied to the pool, by source kind and id.",
    ),
    (
        "proxyguard_alerts_total",
        Kind::Counter,
        "Alert notifications sent, by event kind.",
    ),
    (
        "proxyguard_alerts_suppressed_total",
        Kind::Counter,
        "Alert notifications held back by the cooldown, by event kind.",
    ),
    (
        "proxyguard_bytes_total",
        Kind::Counter,
        "Bytes relayed through tunnels, by direction (up = client to target).",
    ),
    (
        "proxyguard_client_connections_active",
        Kind::Gauge,
        "Client connections currently open.",
    ),
    (
        "proxyguard_client_connections_total",
        Kind::Counter,
        "Client connections accepted.",
    ),
    (
        "proxyguard_tls_handshake_failures_total",
        Kind::Counter,
        "TLS handshakes with clients on a TLS listener that failed, by reason (alert, protocol, io, timeout).",
    ),
    (
        "proxyguard_tls_reloads_total",
        Kind::Counter,
        "Listener certificate reloads (SIGHUP, POST /reload), by result (ok, error).",
    ),
    (
        "proxyguard_config_reloads_total",
        Kind::Counter,
        "Configuration reloads, by result (ok, error).",
    ),
    (
        "proxyguard_degraded_direct_total",
        Kind::Counter,
        "Connections sent direct because every upstream was down and fallback = direct.",
    ),
    (
        "proxyguard_ejections_total",
        Kind::Counter,
        "Upstream ejections, by upstream and reason.",
    ),
    (
        "proxyguard_fleet_connected",
        Kind::Gauge,
        "1 while the [fleet] watch on etcd is established, else 0.",
    ),
    (
        "proxyguard_fleet_reports",
        Kind::Gauge,
        "Other gateways of the fleet that report this upstream down (counted towards [fleet] quorum), by upstream.",
    ),
    (
        "proxyguard_fleet_published_total",
        Kind::Counter,
        "Verdicts this gateway wrote to etcd for the fleet, by state (down, up).",
    ),
    (
        "proxyguard_events_total",
        Kind::Counter,
        "Events published (upstream_down, breaker_open, ...), by kind.",
    ),
    (
        "proxyguard_acl_denied_total",
        Kind::Counter,
        "Destinations refused by the [acl] rules (403 / SOCKS5 reply 2), by kind and reason.",
    ),
    (
        "proxyguard_auth_failures_total",
        Kind::Counter,
        "Failed client logins (Basic or SOCKS5), by listener kind.",
    ),
    (
        "proxyguard_auth_bans_total",
        Kind::Counter,
        "Client addresses banned after too many failed logins, by listener kind.",
    ),
    (
        "proxyguard_auth_banned_requests_total",
        Kind::Counter,
        "Requests refused without checking credentials because the client is banned.",
    ),
    (
        "proxyguard_connections_refused_total",
        Kind::Counter,
        "Client connections refused at admission (limits, allow-list), by reason.",
    ),
    (
        "proxyguard_connections_shed_total",
        Kind::Counter,
        "Idle client connections closed to make room at the connection limit.",
    ),
    (
        "proxyguard_hedges_total",
        Kind::Counter,
        "Safe requests also sent a second time (another upstream or backend, or a new connection to the only upstream) after hedge_after.",
    ),
    (
        "proxyguard_hedges_won_total",
        Kind::Counter,
        "Hedged requests answered first by the second send.",
    ),
    (
        "proxyguard_responses_cut_total",
        Kind::Counter,
        "Plain-HTTP response bodies cut short (stalled past body_idle or broken off), by upstream and kind.",
    ),
    (
        "proxyguard_failovers_total",
        Kind::Counter,
        "Connections that succeeded on a later upstream after an earlier one failed.",
    ),
    (
        "proxyguard_health_checks_total",
        Kind::Counter,
        "Active health checks, by upstream and result (pass, fail).",
    ),
    (
        "proxyguard_races_started_total",
        Kind::Counter,
        "Connect races started (a second upstream tried while the first was slow).",
    ),
    (
        "proxyguard_races_won_total",
        Kind::Counter,
        "Connect races won by a later upstream.",
    ),
    (
        "proxyguard_requests_total",
        Kind::Counter,
        "Proxy requests, by kind (connect, http) and outcome.",
    ),
    (
        "proxyguard_retries_total",
        Kind::Counter,
        "Connection attempts retried.",
    ),
    (
        "proxyguard_tunnels_active",
        Kind::Gauge,
        "Tunnels (CONNECT and SOCKS5) currently open.",
    ),
    (
        "proxyguard_tunnels_total",
        Kind::Counter,
        "Tunnels closed, by kind and outcome.",
    ),
    (
        "proxyguard_upstream_breaker_state",
        Kind::Gauge,
        "Circuit breaker of each upstream or backend: 0 closed, 1 half-open, 2 open.",
    ),
    (
        "proxyguard_upstream_connect_seconds",
        Kind::Histogram,
        "Time to a usable connection through each upstream or to each backend.",
    ),
    (
        "proxyguard_upstream_failures_total",
        Kind::Counter,
        "Failed connects through each upstream or to each backend, by reason.",
    ),
    (
        "proxyguard_upstream_up",
        Kind::Gauge,
        "1 while an upstream or backend may take traffic, 0 while ejected, down or breaker-open.",
    ),
];

/// Families without labels, or whose label values are known up front:
/// seeded to zero so they exist before the first event.
const SEED_COUNTERS: &[(&str, &[(&str, &str)])] = &[
    ("proxyguard_client_connections_total", &[]),
    ("proxyguard_degraded_direct_total", &[]),
    ("proxyguard_failovers_total", &[]),
    ("proxyguard_hedges_total", &[]),
    ("proxyguard_hedges_won_total", &[]),
    ("proxyguard_races_started_total", &[]),
    ("proxyguard_races_won_total", &[]),
    ("proxyguard_retries_total", &[]),
    ("proxyguard_bytes_total", &[("direction", "up")]),
    ("proxyguard_bytes_total", &[("direction", "down")]),
    ("proxyguard_config_reloads_total", &[("result", "ok")]),
    ("proxyguard_config_reloads_total", &[("result", "error")]),
];

/// Installs the Prometheus recorder once per process and describes every
/// family. None when another recorder is already installed.
pub fn handle() -> Option<PrometheusHandle> {
    static H: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    H.get_or_init(|| {
        let h = PrometheusBuilder::new()
            .set_buckets(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ])
            .ok()?
            .install_recorder()
            .ok()?;
        describe();
        seed_globals();
        Some(h)
    })
    .clone()
}

fn describe() {
    for &(name, kind, help) in FAMILIES {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

fn seed_globals() {
    for &(name, labels) in SEED_COUNTERS {
        let labels: Vec<metrics::Label> = labels
            .iter()
            .map(|&(k, v)| metrics::Label::new(k, v))
            .collect();
        metrics::counter!(name, labels).increment(0);
    }
    metrics::gauge!("proxyguard_client_connections_active").increment(0.0);
    metrics::gauge!("proxyguard_tunnels_active").increment(0.0);
}

/// The `proxyguard_upstream_breaker_state` value of a breaker.
pub fn breaker_value(b: BreakerState) -> f64 {
    match b {
        BreakerState::Closed => 0.0,
        BreakerState::HalfOpen => 1.0,
        BreakerState::Open => 2.0,
    }
}

fn seed_member(m: &Member) {
    let name = m.name().to_string();
    metrics::gauge!("proxyguard_upstream_up", "upstream" => name.clone())
        .set(if m.health.eligible() { 1.0 } else { 0.0 });
    metrics::gauge!("proxyguard_upstream_breaker_state", "upstream" => name.clone())
        .set(breaker_value(m.health.breaker_state()));
    for result in ["pass", "fail"] {
        metrics::counter!("proxyguard_health_checks_total", "upstream" => name.clone(), "result" => result)
            .increment(0);
    }
    // Registering the histogram makes it render (all buckets 0) before the
    // first connect.
    let _ = metrics::histogram!("proxyguard_upstream_connect_seconds", "upstream" => name);
}

/// Sets the per-member gauges from the current health of every member of
/// `pools` and creates their zero-valued series. Called when the admin API
/// starts and before each scrape, so members added by a reload appear too.
pub fn seed_pools<'a>(pools: impl IntoIterator<Item = &'a Pool>) {
    for p in pools {
        for m in p.members().iter() {
            seed_member(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).expect("read src dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }

    /// Every metric name written in a `metrics::` macro or a gauge guard
    /// anywhere in src/ has a HELP text here (so `# HELP` cannot go missing
    /// when someone adds a family).
    #[test]
    fn every_family_in_the_sources_is_described() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let known: Vec<&str> = FAMILIES.iter().map(|f| f.0).collect();
        let mut missing = Vec::new();
        let mut seen = 0;
        for f in files {
            if f.ends_with("admin/metrics.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&f).expect("read source");
            for (i, _) in text.match_indices("\"proxyguard_") {
                let rest = &text[i + 1..];
                let end = rest.find('"').unwrap_or(rest.len());
                let name = &rest[..end];
                if !name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    continue;
                }
                seen += 1;
                if !known.contains(&name) {
                    missing.push(format!("{name} ({})", f.display()));
                }
            }
        }
        assert!(seen > 10, "found only {seen} metric names in src/");
        assert!(
            missing.is_empty(),
            "undescribed metric families: {missing:?}"
        );
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        for &(name, kind, help) in FAMILIES {
            assert!(name.starts_with("proxyguard_"), "{name}");
            assert!(!help.is_empty(), "{name}");
            match kind {
                Kind::Counter => assert!(name.ends_with("_total"), "{name}"),
                Kind::Gauge | Kind::Histogram => assert!(!name.ends_with("_total"), "{name}"),
            }
            assert!(
                !name.contains("_ms") && !name.contains("millis"),
                "{name}: base units"
            );
        }
    }
}
