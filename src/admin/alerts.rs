//! Alerts: on events, run actions (webhook POST JSON with timeout and retry,
//! a command with the event in environment variables, a log line), with a
//! cooldown per (event kind, upstream) so a flapping upstream does not flood.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;

use crate::config::schema::AlertConfig;
use crate::events::{Event, EventBus};
use crate::route::Router;
use crate::shutdown::Shutdown;

/// Posts the event as JSON; up to 3 tries with a 5 s timeout each.
async fn webhook(url: &str, ev: &Event) -> Result<(), String> {
    let u = url::Url::parse(url).map_err(|e| e.to_string())?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err("only http:// and https:// webhooks are supported".into());
    }
    let ctx = crate::upstream::ConnectContext::new(
        crate::upstream::Resolver::default(),
        crate::upstream::Timeouts::default(),
    );
    let host = u.host_str().ok_or("webhook URL without host")?.to_string();
    let port = u.port_or_known_default().unwrap_or(80);
    let body = serde_json::to_vec(ev).map_err(|e| e.to_string())?;
    let mut last = String::new();
    for attempt in 0..3u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt))).await;
        }
        let r = tokio::time::timeout(Duration::from_secs(5), async {
            let mut tx = crate::http_client::connect_url::<Full<Bytes>>(&u, &ctx).await?;
            let mut path = u.path().to_string();
            if let Some(q) = u.query() {
                path.push('?');
                path.push_str(q);
            }
            let req = http::Request::post(path)
                .header(http::header::HOST, format!("{host}:{port}"))
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(http::header::USER_AGENT, "proxyguard-alert")
                .body(Full::new(Bytes::from(body.clone())))
                .map_err(|e| e.to_string())?;
            let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(format!("webhook answered {}", resp.status()))
            }
        })
        .await;
        match r {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last = e,
            Err(_) => last = "timed out".into(),
        }
    }
    Err(last)
}

async fn command(cmd: &str, ev: &Event) -> Result<(), String> {
    let mut c = tokio::process::Command::new("/bin/sh");
    c.arg("-c").arg(cmd);
    #[cfg(windows)]
    let mut c = {
        let mut w = tokio::process::Command::new("cmd");
        w.arg("/C").arg(cmd);
        w
    };
    c.env("PROXYGUARD_EVENT", ev.kind)
        .env(
            "PROXYGUARD_UPSTREAM",
            ev.upstream.clone().unwrap_or_default(),
        )
        .env("PROXYGUARD_DETAIL", &ev.detail)
        .env("PROXYGUARD_TIME_MS", ev.time_ms.to_string())
        .kill_on_drop(true);
    match tokio::time::timeout(Duration::from_secs(30), c.status()).await {
        Ok(Ok(s)) if s.success() => Ok(()),
        Ok(Ok(s)) => Err(format!("command exited with {s}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("command timed out after 30 s".into()),
    }
}

/// Spawns the alert dispatcher and, when a rule listens for `error_rate`,
/// the error-rate watcher.
pub fn spawn(rules: Vec<AlertConfig>, router: Arc<Router>, shutdown: Shutdown) {
    if rules.is_empty() {
        return;
    }
    if let Some(r) = rules
        .iter()
        .find(|r| r.on.iter().any(|k| k == "error_rate"))
    {
        let rate = ErrorRate::new(r.threshold, r.window.0);
        spawn_error_rate_watch(rate, router.clone(), shutdown.clone());
    }
    spawn_dispatcher(rules, &router.pool.events, shutdown);
}

/// The share of failed upstream connections over a sliding window, from
/// samples of the members' cumulative counters.
struct ErrorRate {
    threshold: f64,
    window: Duration,
    /// (when, successes, failures) in time order, none older than `window`.
    samples: VecDeque<(Instant, u64, u64)>,
    firing: bool,
}

impl ErrorRate {
    fn new(threshold: f64, window: Duration) -> Self {
        ErrorRate {
            threshold,
            window,
            samples: VecDeque::new(),
            firing: false,
        }
    }

    /// Adds a sample of the cumulative counters taken at `now`. Returns the
    /// event detail when at least 5 connections in the window failed at a
    /// rate of `threshold` or more; it fires again only after the rate fell
    /// below half the threshold. Counters that went down (a reload replaced
    /// the members) count as no change.
    fn observe(&mut self, now: Instant, ok: u64, err: u64) -> Option<String> {
        self.samples.push_back((now, ok, err));
        while self
            .samples
            .front()
            .is_some_and(|s| now.duration_since(s.0) > self.window)
        {
            self.samples.pop_front();
        }
        let &(_, first_ok, first_err) = self.samples.front()?;
        let (dok, derr) = (ok.saturating_sub(first_ok), err.saturating_sub(first_err));
        let total = dok + derr;
        let rate = if total == 0 {
            0.0
        } else {
            derr as f64 / total as f64
        };
        if total >= 5 && rate >= self.threshold && !self.firing {
            self.firing = true;
            return Some(format!(
                "{:.0}% of {total} upstream connections failed in the last {:?}",
                rate * 100.0,
                self.window
            ));
        }
        if rate < self.threshold / 2.0 {
            self.firing = false;
        }
        None
    }
}

/// Successes and failures of all members so far.
fn connection_totals(router: &Router) -> (u64, u64) {
    use std::sync::atomic::Ordering::Relaxed;
    router.pool.members().iter().fold((0, 0), |(o, e), m| {
        (
            o + m.health.successes.load(Relaxed),
            e + m.health.failures.load(Relaxed),
        )
    })
}

/// Samples the counters every second and emits `error_rate` events.
fn spawn_error_rate_watch(mut rate: ErrorRate, router: Arc<Router>, shutdown: Shutdown) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.triggered() => return,
            }
            let (ok, err) = connection_totals(&router);
            if let Some(detail) = rate.observe(Instant::now(), ok, err) {
                router.pool.events.emit("error_rate", None, detail);
            }
        }
    });
}

/// When each (rule, event kind, upstream) last fired.
#[derive(Default)]
struct Cooldowns(HashMap<(usize, &'static str, Option<String>), Instant>);

impl Cooldowns {
    /// Whether rule `i` may fire for `ev` now (and if so, notes that it does).
    fn admit(&mut self, i: usize, rule: &AlertConfig, ev: &Event) -> bool {
        let key = (i, ev.kind, ev.upstream.clone());
        if self
            .0
            .get(&key)
            .is_some_and(|t| t.elapsed() < rule.cooldown.0)
        {
            return false;
        }
        self.0.insert(key, Instant::now());
        true
    }
}

/// Runs every matching rule on each event of `bus`, until shutdown.
fn spawn_dispatcher(rules: Vec<AlertConfig>, bus: &EventBus, shutdown: Shutdown) {
    let mut rx = bus.subscribe();
    tokio::spawn(async move {
        let mut cooldowns = Cooldowns::default();
        loop {
            let ev = tokio::select! {
                r = rx.recv() => match r {
                    Ok(ev) => ev,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "alert dispatcher lagged behind events");
                        continue;
                    }
                    Err(_) => return,
                },
                _ = shutdown.triggered() => return,
            };
            for (i, rule) in rules.iter().enumerate() {
                if !rule.on.iter().any(|k| k == ev.kind) {
                    continue;
                }
                if !cooldowns.admit(i, rule, &ev) {
                    metrics::counter!("proxyguard_alerts_suppressed_total", "event" => ev.kind)
                        .increment(1);
                    continue;
                }
                fire(rule, &ev);
            }
        }
    });
}

/// One rule's actions for one event: the log line at once, the webhook and
/// the command in a task of their own.
fn fire(rule: &AlertConfig, ev: &Event) {
    metrics::counter!("proxyguard_alerts_total", "event" => ev.kind).increment(1);
    if rule.log || (rule.webhook.is_none() && rule.command.is_none()) {
        tracing::warn!(event = ev.kind, upstream = ev.upstream.as_deref().unwrap_or("-"), detail = %ev.detail, "alert");
    }
    let (ev, hook, cmd) = (ev.clone(), rule.webhook.clone(), rule.command.clone());
    tokio::spawn(async move {
        if let Some(h) = hook {
            if let Err(e) = webhook(&h, &ev).await {
                tracing::warn!(event = ev.kind, error = %e, "alert webhook failed");
            }
        }
        if let Some(c) = cmd {
            if let Err(e) = command(&c, &ev).await {
                tracing::warn!(event = ev.kind, error = %e, "alert command failed");
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_rate_fires_once_over_the_threshold_and_rearms_below_half() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut r = ErrorRate::new(0.5, Duration::from_secs(10));
        assert_eq!(r.observe(at(0), 100, 10), None);
        // 4 failures in the window: too few to judge.
        assert_eq!(r.observe(at(1), 100, 14), None);
        let detail = r.observe(at(2), 101, 16);
        assert_eq!(
            detail.as_deref(),
            Some("86% of 7 upstream connections failed in the last 10s")
        );
        // Still over the threshold: no second event.
        assert_eq!(r.observe(at(3), 101, 20), None);
        // The early samples leave the window; only successes since: re-armed.
        assert_eq!(r.observe(at(14), 200, 20), None);
        assert_eq!(r.observe(at(15), 250, 22), None);
        assert_eq!(
            r.observe(at(16), 250, 80).as_deref(),
            Some("55% of 110 upstream connections failed in the last 10s"),
            "fires again once re-armed"
        );
    }

    #[test]
    fn error_rate_counters_that_go_down_after_a_reload_count_as_no_change() {
        let t0 = Instant::now();
        let mut r = ErrorRate::new(0.5, Duration::from_secs(10));
        assert_eq!(r.observe(t0, 1000, 500), None);
        assert_eq!(r.observe(t0 + Duration::from_secs(1), 3, 2), None);
    }
}
