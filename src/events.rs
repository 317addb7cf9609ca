//! The event bus: health transitions, degrade, reloads. Consumed by metrics,
//! alerts and the status page's recent events; nothing else polls.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;

/// One event. `kind` names are the alert `on = [...]` interface.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Unix time in milliseconds.
    pub time_ms: u64,
    pub kind: &'static str,
    pub upstream: Option<String>,
    pub detail: String,
}

pub const KINDS: &[&str] = &[
    "upstream_down",
    "upstream_up",
    "breaker_open",
    "breaker_half_open",
    "breaker_closed",
    "all_down",
    "degraded",
    "error_rate",
    "config_reload",
    "config_reload_failed",
    "auth_ban",
    "fleet_connected",
    "fleet_disconnected",
];

pub struct EventBus {
    tx: broadcast::Sender<Event>,
    recent: Mutex<VecDeque<Event>>,
}

const RECENT: usize = 200;

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl EventBus {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(1024);
        EventBus {
            tx,
            recent: Mutex::new(VecDeque::with_capacity(RECENT)),
        }
    }

    pub fn emit(&self, kind: &'static str, upstream: Option<&str>, detail: impl Into<String>) {
        let ev = Event {
            time_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            kind,
            upstream: upstream.map(str::to_string),
            detail: detail.into(),
        };
        metrics::counter!("proxyguard_events_total", "kind" => kind).increment(1);
        if let Ok(mut r) = self.recent.lock() {
            if r.len() == RECENT {
                r.pop_front();
            }
            r.push_back(ev.clone());
        }
        let _ = self.tx.send(ev);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }

    /// The most recent events, newest last.
    pub fn recent(&self) -> Vec<Event> {
        self.recent
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default()
    }
}
