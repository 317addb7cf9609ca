//! Alerts: on events, run actions (webhook POST JSON with timeout and retry,
//! a command with the event in environment variables, a log line), with a
//! cooldown per (event kind, upstream) so a flapping upstream does not flood.

use std::collections::HashMap;
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

/// Spawns the alert dispatcher and the error-rate watcher.
pub fn spawn(rules: Vec<AlertConfig>, router: Arc<Router>, shutdown: Shutdown) {
    if rules.is_empty() {
        return;
    }
    let bus: Arc<EventBus> = router.pool.events.clone();
    // Error rate over each rule's window, checked every second.
    if let Some(r) = rules
        .iter()
        .find(|r| r.on.iter().any(|k| k == "error_rate"))
    {
        let (threshold, window) = (r.threshold, r.window.0);
        let router = router.clone();
        let sd = shutdown.clone();
        tokio::spawn(async move {
            let mut samples: std::collections::VecDeque<(Instant, u64, u64)> = Default::default();
            let mut firing = false;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = sd.triggered() => return,
                }
                let (ok, err) = router.pool.members().iter().fold((0, 0), |(o, e), m| {
                    (
                        o + m
                            .health
                            .successes
                            .load(std::sync::atomic::Ordering::Relaxed),
                        e + m.health.failures.load(std::sync::atomic::Ordering::Relaxed),
                    )
                });
                let now = Instant::now();
                samples.push_back((now, ok, err));
                while samples
                    .front()
                    .is_some_and(|s| now.duration_since(s.0) > window)
                {
                    samples.pop_front();
                }
                let Some(first) = samples.front() else {
                    continue;
                };
                let (dok, derr) = (ok.saturating_sub(first.1), err.saturating_sub(first.2));
                let total = dok + derr;
                let rate = if total == 0 {
                    0.0
                } else {
                    derr as f64 / total as f64
                };
                if total >= 5 && rate >= threshold && !firing {
                    firing = true;
                    router.pool.events.emit(
                        "error_rate",
                        None,
                        format!(
                            "{:.0}% of {total} upstream connections failed in the last {window:?}",
                            rate * 100.0
                        ),
                    );
                } else if rate < threshold / 2.0 {
                    firing = false;
                }
            }
        });
    }
    let mut rx = bus.subscribe();
    tokio::spawn(async move {
        let mut last: HashMap<(usize, &'static str, Option<String>), Instant> = HashMap::new();
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
                let key = (i, ev.kind, ev.upstream.clone());
                if last
                    .get(&key)
                    .is_some_and(|t| t.elapsed() < rule.cooldown.0)
                {
                    metrics::counter!("proxyguard_alerts_suppressed_total", "event" => ev.kind)
                        .increment(1);
                    continue;
                }
                last.insert(key, Instant::now());
                metrics::counter!("proxyguard_alerts_total", "event" => ev.kind).increment(1);
                if rule.log || (rule.webhook.is_none() && rule.command.is_none()) {
                    tracing::warn!(event = ev.kind, upstream = ev.upstream.as_deref().unwrap_or("-"), detail = %ev.detail, "alert");
                }
                let (ev2, hook, cmd) = (ev.clone(), rule.webhook.clone(), rule.command.clone());
                tokio::spawn(async move {
                    if let Some(h) = hook {
                        if let Err(e) = webhook(&h, &ev2).await {
                            tracing::warn!(event = ev2.kind, error = %e, "alert webhook failed");
                        }
                    }
                    if let Some(c) = cmd {
                        if let Err(e) = command(&c, &ev2).await {
                            tracing::warn!(event = ev2.kind, error = %e, "alert command failed");
                        }
                    }
                });
            }
        }
    });
}
