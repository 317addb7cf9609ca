//! Active health checks: the real path (TCP + proxy handshake, optionally a
//! request for a check URL through the upstream), on an interval with jitter,
//! sooner for ejected or down upstreams, optionally only for upstreams in use.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use rand::Rng;

use super::Member;
use crate::config::schema::{CheckKind, Checks, HealthConfig};
use crate::route::Router;
use crate::shutdown::Shutdown;
use crate::upstream::{ConnectError, Host, Phase, PhaseObserver, Target};

/// Notes whether the proxy's name was resolved, so a check that times out
/// while the resolver is silent says so instead of only "timed out".
#[derive(Default)]
struct Resolved(bool);

impl PhaseObserver for Resolved {
    fn phase(&mut self, phase: Phase, _took: Duration, _detail: &str) {
        self.0 |= phase == Phase::Dns;
    }
}

/// Runs one check of `m`; Ok(detail) or Err(reason).
pub async fn check_once(router: &Router, m: &Member, cfg: &HealthConfig) -> Result<String, String> {
    let spec = m.spec();
    let ctx = &router.ctx;
    let mut obs = Resolved::default();
    let fut = async {
        if let Some(url) = &cfg.url {
            let u = url::Url::parse(url).map_err(|e| e.to_string())?;
            let host = u.host_str().ok_or("check URL without host")?;
            let target = Target::parse_authority(
                &format!("{}:{}", host, u.port_or_known_default().unwrap_or(80)),
                None,
            )
            .ok_or("bad check URL host")?;
            let hc = spec
                .connect_for_http(&target, ctx, &mut obs)
                .await
                .map_err(|e| e.to_string())?;
            let mut tx = crate::http_client::handshake::<_, Empty<Bytes>>(hc.conn)
                .await
                .map_err(|e| e.to_string())?;
            let path = if hc.absolute_form {
                url.clone()
            } else {
                let mut p = u.path().to_string();
                if let Some(q) = u.query() {
                    p.push('?');
                    p.push_str(q);
                }
                p
            };
            let mut req = http::Request::get(path)
                .header(http::header::HOST, target.to_string())
                .header(http::header::USER_AGENT, "proxyguard-health");
            if let Some(a) = &hc.proxy_authorization {
                req = req.header(http::header::PROXY_AUTHORIZATION, a);
            }
            let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
            let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let _ = resp.into_body().collect().await;
            let ok = if cfg.expect_status.is_empty() {
                (200..400).contains(&status)
            } else {
                cfg.expect_status.contains(&status)
            };
            if ok {
                Ok(format!("GET {url}: {status}"))
            } else {
                Err(format!("GET {url}: unexpected status {status}"))
            }
        } else if let Some(t) = &cfg.target {
            let target = Target::parse_authority(t, None).ok_or("bad health.target")?;
            spec.connect_tunnel(&target, ctx, &mut obs)
                .await
                .map(|_| format!("tunnel to {target} ok"))
                .map_err(|e: ConnectError| e.to_string())
        } else {
            spec.probe(ctx, cfg.check == CheckKind::Tcp, &mut obs)
                .await
                .map_err(|e| e.to_string())
        }
    };
    let r = tokio::time::timeout(cfg.timeout.0, fut).await;
    match (r, &spec.host) {
        (Ok(r), _) => r,
        (Err(_), Host::Name(name)) if !obs.0 => Err(format!(
            "check timed out after {:?}: DNS lookup of {name} unanswered",
            cfg.timeout.0
        )),
        (Err(_), _) => Err(format!("check timed out after {:?}", cfg.timeout.0)),
    }
}

/// Spawns the checker loop. Each upstream has its own schedule.
pub fn spawn(router: Arc<Router>, cfg: HealthConfig, checks: Checks, shutdown: Shutdown) {
    if !cfg.enabled {
        return;
    }
    tokio::spawn(async move {
        let mut next: std::collections::HashMap<String, Instant> = Default::default();
        let tick = (cfg.interval.0 / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(tick) => {}
                _ = shutdown.triggered() => return,
            }
            let now = Instant::now();
            for m in router.pool.members().iter() {
                if m.spec().is_direct() {
                    continue;
                }
                let due = next.get(m.name()).is_none_or(|t| now >= *t);
                if !due {
                    continue;
                }
                // Out of service, or the last check failed: look again sooner,
                // so a proxy that stopped answering is down within
                // about `timeout + interval/4` after its first failed check.
                let troubled = !m.health.eligible()
                    || m.health.state() != super::State::Healthy
                    || m.health.last_check().is_some_and(|c| !c.1);
                if checks == Checks::Active
                    && !troubled
                    && !m.health.used_within(cfg.interval.0 * 3)
                {
                    continue;
                }
                // Ejected/down upstreams are re-checked four times as often.
                let base = if troubled {
                    cfg.interval.0 / 4
                } else {
                    cfg.interval.0
                };
                let jitter = rand::thread_rng().gen_range(0.9..1.1);
                next.insert(m.name().to_string(), now + base.mul_f64(jitter));
                let (router, m, cfg) = (router.clone(), m.clone(), cfg.clone());
                tokio::spawn(async move {
                    let r = check_once(&router, &m, &cfg).await;
                    let (ok, detail) = match &r {
                        Ok(d) => (true, d.as_str()),
                        Err(e) => (false, e.as_str()),
                    };
                    tracing::debug!(upstream = m.name(), ok, detail, "health check");
                    let deep = cfg.url.is_some() || cfg.target.is_some();
                    metrics::counter!(
                        "proxyguard_health_checks_total",
                        "upstream" => m.name().to_string(),
                        "result" => if ok { "pass" } else { "fail" }
                    )
                    .increment(1);
                    let check = super::outcome::Check {
                        ok,
                        deep,
                        detail: detail.to_string(),
                        rise: cfg.rise,
                        fall: cfg.fall,
                    };
                    router.pool.report(&m, super::Outcome::Checked(check));
                });
            }
            // Members removed by a reload or discovery leave the schedule.
            let members = router.pool.members();
            let live: std::collections::HashSet<&str> = members.iter().map(|m| m.name()).collect();
            next.retain(|name, _| live.contains(name.as_str()));
        }
    });
}
