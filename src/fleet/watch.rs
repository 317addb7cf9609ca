//! Watches every gateway's reports under the prefix and applies them to the
//! pool. On (re)connecting it reads the whole prefix, then watches from that
//! revision. Losing etcd raises `fleet_disconnected`, sets
//! `proxyguard_fleet_connected` to 0 and drops the fleet's reports (each
//! gateway falls back to its own verdicts); reconnecting (with backoff)
//! raises `fleet_connected` and reads everything again. The view is applied
//! again every second, so members added by a reload or discovery get it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use etcd_client::{EventType, GetOptions, KeyValue, WatchOptions};

use super::{backoff, call, connect, parse_key, FleetError, Report};
use crate::config::fleet::FleetSettings;
use crate::route::Router;
use crate::shutdown::Shutdown;

/// How often the view is applied again (for members added since: a
/// member that already holds these reports sees no change).
const REAPPLY_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// One gateway's report as seen here.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    down: bool,
    reason: String,
    /// etcd `mod_revision`: a new put of the same report is a fresh report.
    rev: i64,
}

/// Reasons that depend on the reporting gateway's own credentials or
/// policy: shown, never counted towards the quorum.
fn gateway_specific(reason: &str) -> bool {
    matches!(reason, "auth" | "acl")
}

/// Everyone's reports: upstream identity → gateway id → report.
#[derive(Debug, Default)]
pub struct View {
    reports: HashMap<String, BTreeMap<String, Seen>>,
}

impl View {
    /// The reports that count for `identity`: other gateways saying down.
    fn counted(&self, identity: &str, own_id: &str) -> Vec<(String, String, i64)> {
        self.reports
            .get(identity)
            .into_iter()
            .flatten()
            .filter(|(gw, r)| gw.as_str() != own_id && r.down && !gateway_specific(&r.reason))
            .map(|(gw, r)| (gw.clone(), r.reason.clone(), r.rev))
            .collect()
    }

    fn set(&mut self, identity: String, gateway: String, seen: Option<Seen>) {
        match seen {
            Some(s) => {
                self.reports.entry(identity).or_default().insert(gateway, s);
            }
            None => {
                if let Some(m) = self.reports.get_mut(&identity) {
                    m.remove(&gateway);
                    if m.is_empty() {
                        self.reports.remove(&identity);
                    }
                }
            }
        }
    }
}

/// Applies the change from `old` to `new` for `identity` to the pool: a
/// counted report in `new` that `old` did not hold (same gateway and
/// revision) is fresh.
fn apply(router: &Router, s: &FleetSettings, identity: &str, old: &View, new: &View) {
    let before = old.counted(identity, &s.id);
    let after = new.counted(identity, &s.id);
    let fresh = after.iter().any(|a| !before.contains(a));
    let down: Vec<(String, String)> = after.into_iter().map(|(g, r, _)| (g, r)).collect();
    router.pool.fleet_apply(identity, &down, s.quorum, fresh);
}

/// Replaces the whole view (resync after (re)connecting, or clearing).
fn replace(router: &Router, s: &FleetSettings, view: &mut View, new: View) {
    let mut ids: Vec<String> = view
        .reports
        .keys()
        .chain(new.reports.keys())
        .cloned()
        .collect();
    ids.sort();
    ids.dedup();
    for id in &ids {
        apply(router, s, id, view, &new);
    }
    *view = new;
}

/// Parses one key-value under the prefix; None for a foreign or bad one.
fn decode(s: &FleetSettings, kv: &KeyValue) -> Option<(String, String, Seen)> {
    let key = kv.key_str().ok()?;
    let (identity, gateway) = parse_key(&s.prefix, key)?;
    let r: Report = match serde_json::from_slice(kv.value()) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(key, error = %e, "fleet: ignoring a value that is not a report");
            return None;
        }
    };
    let seen = Seen {
        down: r.is_down(),
        reason: r.reason,
        rev: kv.mod_revision(),
    };
    Some((identity, gateway, seen))
}

/// The watcher task.
pub async fn run(s: FleetSettings, router: Arc<Router>, shutdown: Shutdown) {
    let mut view = View::default();
    // None until the first attempt: the first failure is an event too.
    let mut connected: Option<bool> = None;
    let mut round = 0u32;
    loop {
        let r = session(&s, &router, &mut view, &mut connected, &shutdown).await;
        let e = match r {
            Ok(()) => return,
            Err(e) => e,
        };
        if connected != Some(false) {
            connected = Some(false);
            metrics::gauge!("proxyguard_fleet_connected").set(0.0);
            tracing::warn!(error = %e, "fleet: etcd lost; using this gateway's own verdicts only");
            router.pool.events.emit(
                "fleet_disconnected",
                None,
                format!("{e}; fleet reports dropped, retrying with backoff"),
            );
            replace(&router, &s, &mut view, View::default());
            round = 0;
        } else {
            tracing::debug!(error = %e, "fleet: etcd still unreachable");
        }
        if !backoff(round, &shutdown).await {
            return;
        }
        round = round.saturating_add(1);
    }
}

/// One connection: read the prefix, then follow the watch until it fails
/// (Err) or shutdown (Ok).
async fn session(
    s: &FleetSettings,
    router: &Router,
    view: &mut View,
    connected: &mut Option<bool>,
    shutdown: &Shutdown,
) -> Result<(), FleetError> {
    let mut client = connect(s).await?;
    let got = call(
        "get",
        client.get(s.prefix.as_str(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let rev = got.header().map(|h| h.revision()).unwrap_or(0);
    let mut fresh = View::default();
    for kv in got.kvs() {
        if let Some((identity, gateway, seen)) = decode(s, kv) {
            fresh.set(identity, gateway, Some(seen));
        }
    }
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(rev + 1);
    let (_watcher, mut stream) = call("watch", client.watch(s.prefix.as_str(), Some(opts))).await?;
    replace(router, s, view, fresh);
    if *connected != Some(true) {
        *connected = Some(true);
        metrics::gauge!("proxyguard_fleet_connected").set(1.0);
        tracing::info!(endpoints = ?s.endpoints, "fleet: watching the fleet's reports");
        router.pool.events.emit(
            "fleet_connected",
            None,
            format!("watching {} on {}", s.prefix, s.endpoints.join(", ")),
        );
    }
    // Members that a reload or discovery adds later get the current view.
    let mut reapply = tokio::time::interval(REAPPLY_EVERY);
    reapply.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let msg = tokio::select! {
            m = stream.message() => m,
            _ = reapply.tick() => {
                let ids: Vec<String> = view.reports.keys().cloned().collect();
                for id in &ids {
                    apply(router, s, id, view, view);
                }
                continue;
            }
            _ = shutdown.triggered() => return Ok(()),
        };
        let resp = match msg {
            Ok(Some(r)) => r,
            Ok(None) => return Err(FleetError::WatchEnded("stream closed")),
            Err(source) => {
                return Err(FleetError::Etcd {
                    op: "watch",
                    source,
                })
            }
        };
        if resp.canceled() {
            return Err(FleetError::WatchEnded("cancelled by etcd"));
        }
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let Some((identity, gateway)) = kv.key_str().ok().and_then(|k| parse_key(&s.prefix, k))
            else {
                continue;
            };
            let seen = match ev.event_type() {
                EventType::Put => decode(s, kv).map(|d| d.2),
                EventType::Delete => None,
            };
            let old = View {
                reports: view
                    .reports
                    .get(&identity)
                    .map(|m| HashMap::from([(identity.clone(), m.clone())]))
                    .unwrap_or_default(),
            };
            view.set(identity.clone(), gateway, seen);
            apply(router, s, &identity, &old, view);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(down: bool, reason: &str, rev: i64) -> Option<Seen> {
        Some(Seen {
            down,
            reason: reason.into(),
            rev,
        })
    }

    #[test]
    fn counts_other_gateways_down_reports_only() {
        let mut v = View::default();
        let u = "http://127.0.0.1:3128".to_string();
        v.set(u.clone(), "me".into(), seen(true, "timeout", 1));
        v.set(u.clone(), "g2".into(), seen(true, "refused", 2));
        v.set(u.clone(), "g3".into(), seen(false, "ok", 3));
        v.set(u.clone(), "g4".into(), seen(true, "auth", 4));
        let c = v.counted(&u, "me");
        assert_eq!(c, vec![("g2".to_string(), "refused".to_string(), 2)]);
        v.set(u.clone(), "g2".into(), None);
        assert!(v.counted(&u, "me").is_empty());
        v.set(u.clone(), "me".into(), None);
        v.set(u.clone(), "g3".into(), None);
        v.set(u.clone(), "g4".into(), None);
        assert!(v.reports.is_empty(), "emptied identities are dropped");
    }
}
