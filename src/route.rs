//! Routing one connection: bypass (`no_proxy`) goes direct, everything else
//! goes through the pool: candidates in strategy order, a slow handshake
//! raced against the next candidate after `race_after`, failed attempts
//! retried on the next upstream with exponential backoff and full jitter
//! between rounds, all inside one `connect_deadline`. Connecting happens
//! before any client byte is sent upstream, so these retries never duplicate
//! a request.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::stream::{FuturesUnordered, StreamExt};

use crate::config::noproxy::NoProxy;
use crate::config::Config;
use crate::pool::{Member, Pool, Traffic};
use crate::upstream::{
    Conn, ConnectContext, ConnectError, Host, HttpConn, NoopObserver, Phase, PhaseObserver,
    Resolver, Target, UpstreamSpec,
};

/// Where a connection went.
#[derive(Debug, Clone)]
pub enum Route {
    /// `no_proxy` matched (or no upstreams configured).
    Bypass,
    /// Every upstream was out and `fallback = "direct"` applied.
    Degraded,
    Upstream(Arc<Member>),
}

impl Route {
    pub fn name(&self) -> &str {
        match self {
            Route::Bypass => "direct(bypass)",
            Route::Degraded => "direct(degraded)",
            Route::Upstream(m) => m.name(),
        }
    }
}

/// Settings a reload may replace together.
pub struct RouteTable {
    pub no_proxy: NoProxy,
    pub bypass_loopback: bool,
}

pub struct Router {
    pub ctx: ConnectContext,
    pub pool: Pool,
    pub table: ArcSwap<RouteTable>,
    direct: UpstreamSpec,
}

enum Decision {
    Fail(ConnectError),
    Direct(Route),
    Pool(Vec<Arc<Member>>),
}

/// A routing decision for one plain-HTTP request (see [`Router::plain_plan`]).
pub struct PlainPlan(Decision);

impl PlainPlan {
    /// Routes an idle connection may be reused on, most preferred first.
    pub fn routes(&self) -> Vec<Route> {
        match &self.0 {
            Decision::Fail(_) => Vec::new(),
            Decision::Direct(r) => vec![r.clone()],
            Decision::Pool(c) => c.iter().cloned().map(Route::Upstream).collect(),
        }
    }

    /// Drops the upstreams in `tried` (already answered this request with a
    /// gateway error) unless that would leave nothing.
    pub fn excluding(self, tried: &[Arc<Member>]) -> PlainPlan {
        match self.0 {
            Decision::Pool(c) if !tried.is_empty() => {
                let rest: Vec<Arc<Member>> = c
                    .iter()
                    .filter(|m| !tried.iter().any(|t| Arc::ptr_eq(t, m)))
                    .cloned()
                    .collect();
                PlainPlan(Decision::Pool(if rest.is_empty() { c } else { rest }))
            }
            d => PlainPlan(d),
        }
    }
}

#[derive(Clone, Copy)]
enum Op {
    Tunnel,
    Http,
}

enum Established {
    Tunnel(Conn),
    Http(HttpConn),
}

type Attempt<'a> = Pin<
    Box<
        dyn Future<Output = (Arc<Member>, Duration, Result<Established, ConnectError>)> + Send + 'a,
    >,
>;

impl Router {
    pub fn new(cfg: &Config) -> Self {
        let ctx = ConnectContext::new(Resolver::new(cfg.resolve.clone()), cfg.timeouts);
        Router {
            ctx,
            pool: Pool::new(
                cfg.upstreams.clone(),
                cfg.file.pool.clone(),
                cfg.file.breaker.clone(),
            ),
            table: ArcSwap::from_pointee(RouteTable {
                no_proxy: cfg.no_proxy.clone(),
                bypass_loopback: cfg.bypass_loopback,
            }),
            direct: UpstreamSpec::direct("direct"),
        }
    }

    fn decide(&self, target: &Target, traffic: Traffic) -> Decision {
        let table = self.table.load();
        let loopback = match &target.host {
            Host::Ip(ip) => ip.is_loopback(),
            Host::Name(n) => n == "localhost",
        };
        if loopback {
            if table.bypass_loopback {
                return Decision::Direct(Route::Bypass);
            }
        } else if table.no_proxy.bypass(&target.host.bare(), target.port) {
            return Decision::Direct(Route::Bypass);
        }
        let plan = self.pool.plan(target, traffic);
        if plan.breakers_open {
            return Decision::Fail(ConnectError::NoRoute(
                "every upstream's circuit breaker is open".into(),
            ));
        }
        if plan.degrade_direct {
            tracing::warn!(target = %target, "all upstreams unavailable: degraded to direct");
            return Decision::Direct(Route::Degraded);
        }
        if plan.members.is_empty() {
            Decision::Direct(Route::Bypass)
        } else {
            Decision::Pool(plan.members)
        }
    }

    /// Decides how plain-HTTP traffic to `target` goes: one decision per
    /// request, used both to look for an idle connection (in plan order) and,
    /// on a miss, to open one with the same plan, so reuse and round-robin
    /// agree on the upstream.
    pub fn plain_plan(&self, target: &Target) -> PlainPlan {
        PlainPlan(self.decide(target, Traffic::Plain))
    }

    /// Opens a tunnel to `target`.
    pub async fn tunnel(&self, target: &Target) -> Result<(Conn, Route), ConnectError> {
        match self.decide(target, Traffic::Tunnel) {
            Decision::Fail(e) => Err(e),
            Decision::Direct(r) => {
                let c = self
                    .direct
                    .connect_tunnel(target, &self.ctx, &mut NoopObserver)
                    .await?;
                Ok((c, r))
            }
            Decision::Pool(cands) => match self.attempt(&cands, target, Op::Tunnel).await? {
                (Established::Tunnel(c), r) => Ok((c, r)),
                (Established::Http(h), r) => Ok((h.conn, r)),
            },
        }
    }

    /// Opens a tunnel with a phase observer, through one given upstream (doctor).
    pub async fn tunnel_via(
        &self,
        spec: &UpstreamSpec,
        target: &Target,
        obs: &mut dyn PhaseObserver,
    ) -> Result<Conn, ConnectError> {
        spec.connect_tunnel(target, &self.ctx, obs).await
    }

    /// Opens a connection for plain-HTTP forwarding, following `plan`.
    pub async fn http_conn(
        &self,
        plan: PlainPlan,
        target: &Target,
    ) -> Result<(HttpConn, Route), ConnectError> {
        match plan.0 {
            Decision::Fail(e) => Err(e),
            Decision::Direct(r) => {
                let c = self
                    .direct
                    .connect_for_http(target, &self.ctx, &mut NoopObserver)
                    .await?;
                Ok((c, r))
            }
            Decision::Pool(cands) => match self.attempt(&cands, target, Op::Http).await? {
                (Established::Http(h), r) => Ok((h, r)),
                (Established::Tunnel(c), r) => Ok((
                    HttpConn {
                        conn: c,
                        absolute_form: false,
                        proxy_authorization: None,
                    },
                    r,
                )),
            },
        }
    }

    fn start<'a>(
        &'a self,
        m: Arc<Member>,
        target: &'a Target,
        op: Op,
        limit: Duration,
    ) -> Attempt<'a> {
        use tracing::Instrument;
        let span = tracing::debug_span!("attempt", upstream = m.name(), target = %target);
        Box::pin(
            async move {
                let start = Instant::now();
                let mut obs = NoopObserver;
                let fut = async {
                    match op {
                        Op::Tunnel => m
                            .spec()
                            .connect_tunnel(target, &self.ctx, &mut obs)
                            .await
                            .map(Established::Tunnel),
                        Op::Http => m
                            .spec()
                            .connect_for_http(target, &self.ctx, &mut obs)
                            .await
                            .map(Established::Http),
                    }
                };
                let r = match tokio::time::timeout(limit, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(ConnectError::timeout(Phase::Tcp, limit, true)),
                };
                tracing::debug!(
                    ok = r.is_ok(),
                    took_ms = start.elapsed().as_millis() as u64,
                    "attempt finished"
                );
                (m, start.elapsed(), r)
            }
            .instrument(span),
        )
    }

    async fn attempt<'a>(
        &'a self,
        cands: &[Arc<Member>],
        target: &'a Target,
        op: Op,
    ) -> Result<(Established, Route), ConnectError> {
        let cfg = self.pool.config();
        let started = Instant::now();
        let deadline = started + cfg.connect_deadline.0;
        let max_attempts = cfg.max_attempts.max(1) as usize;
        let race_after = self.pool.race_after();
        // When everything is out of service, the plan holds the least bad
        // members: use them without asking admission.
        let all_out = cands.iter().all(|m| !m.health.eligible());
        let mut inflight: FuturesUnordered<Attempt<'a>> = FuturesUnordered::new();
        let mut inflight_names: Vec<Arc<Member>> = Vec::new();
        let mut inflight_started: Vec<(Arc<Member>, Instant)> = Vec::new();
        let mut started_n = 0usize;
        let mut next = 0usize;
        let mut round = 0u32;
        let mut last: Option<ConnectError> = None;
        let mut first_failed = false;

        // Starts the next admissible candidate; false when none is left.
        let launch = |inflight: &mut FuturesUnordered<Attempt<'a>>,
                      names: &mut Vec<Arc<Member>>,
                      started_at: &mut Vec<(Arc<Member>, Instant)>,
                      started_n: &mut usize,
                      next: &mut usize,
                      only_first_round: bool|
         -> bool {
            while *started_n < max_attempts {
                if only_first_round && *next >= cands.len() {
                    return false;
                }
                let m = &cands[*next % cands.len()];
                if *next % cands.len() == 0 && *next > 0 && only_first_round {
                    return false;
                }
                *next += 1;
                let (admitted, t) = if all_out {
                    (true, Vec::new())
                } else {
                    m.health.try_admit()
                };
                self.pool.transitions(m, t);
                if !admitted {
                    if *next >= cands.len() * 2 {
                        return false;
                    }
                    continue;
                }
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return false;
                }
                inflight.push(self.start(m.clone(), target, op, remaining));
                names.push(m.clone());
                started_at.push((m.clone(), Instant::now()));
                *started_n += 1;
                return true;
            }
            false
        };

        if !launch(
            &mut inflight,
            &mut inflight_names,
            &mut inflight_started,
            &mut started_n,
            &mut next,
            false,
        ) {
            return Err(ConnectError::NoRoute(
                "no upstream admitted a connection".into(),
            ));
        }
        loop {
            let race_timer = async {
                match race_after {
                    Some(d) if next < cands.len() && started_n < max_attempts => {
                        tokio::time::sleep(d).await
                    }
                    _ => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                done = inflight.next() => {
                    let Some((m, took, r)) = done else {
                        // Nothing in flight: start the next round after a backoff.
                        if started_n >= max_attempts || Instant::now() >= deadline {
                            break;
                        }
                        if next > 0 && next % cands.len() == 0 {
                            let pause = crate::pool::backoff::full_jitter(round, cfg.backoff_base.0, cfg.backoff_cap.0);
                            round += 1;
                            let pause = pause.min(deadline.saturating_duration_since(Instant::now()));
                            tokio::time::sleep(pause).await;
                        }
                        if !launch(&mut inflight, &mut inflight_names, &mut inflight_started, &mut started_n, &mut next, false) {
                            break;
                        }
                        continue;
                    };
                    inflight_names.retain(|x| !Arc::ptr_eq(x, &m));
                    match r {
                        Ok(c) => {
                            self.pool.report_success(&m, took);
                            // Losers that were raced because they were slow count as
                            // a timeout: a blackholed upstream gets ejected instead
                            // of costing every connection `race_after`.
                            for (other, since) in &inflight_started {
                                if inflight_names.iter().any(|x| Arc::ptr_eq(x, other))
                                    && race_after.is_some_and(|r| since.elapsed() >= r)
                                {
                                    self.pool.report_failure(
                                        other,
                                        &ConnectError::timeout(Phase::ProxyHandshake, since.elapsed(), true),
                                    );
                                } else if inflight_names.iter().any(|x| Arc::ptr_eq(x, other)) {
                                    other.health.release_trial();
                                }
                            }
                            if !Arc::ptr_eq(&m, &cands[0]) || first_failed {
                                self.pool.stats.failovers.fetch_add(1, Ordering::Relaxed);
                                metrics::counter!("proxyguard_failovers_total").increment(1);
                            }
                            if !first_failed && !Arc::ptr_eq(&m, &cands[0]) {
                                self.pool.stats.races_won_by_later.fetch_add(1, Ordering::Relaxed);
                                metrics::counter!("proxyguard_races_won_total").increment(1);
                            }
                            return Ok((c, Route::Upstream(m)));
                        }
                        Err(e) => {
                            tracing::debug!(upstream = m.name(), error = %e, "upstream attempt failed");
                            self.pool.report_failure(&m, &e);
                            first_failed = true;
                            let retry = e.is_proxy_side();
                            last = Some(e);
                            if !retry {
                                if inflight.is_empty() {
                                    break;
                                }
                                continue;
                            }
                            if inflight.is_empty() {
                                self.pool.stats.retries.fetch_add(1, Ordering::Relaxed);
                                metrics::counter!("proxyguard_retries_total").increment(1);
                                if next > 0 && next % cands.len() == 0 {
                                    let pause = crate::pool::backoff::full_jitter(round, cfg.backoff_base.0, cfg.backoff_cap.0);
                                    round += 1;
                                    let pause = pause.min(deadline.saturating_duration_since(Instant::now()));
                                    tokio::time::sleep(pause).await;
                                }
                                if !launch(&mut inflight, &mut inflight_names, &mut inflight_started, &mut started_n, &mut next, false) {
                                    break;
                                }
                            }
                        }
                    }
                }
                _ = race_timer => {
                    // The chosen upstream is slow: race the next one.
                    if launch(&mut inflight, &mut inflight_names, &mut inflight_started, &mut started_n, &mut next, true) {
                        self.pool.stats.races_started.fetch_add(1, Ordering::Relaxed);
                        metrics::counter!("proxyguard_races_started_total").increment(1);
                        tracing::debug!(target = %target, "racing the next upstream");
                    }
                }
            }
        }
        for other in &inflight_names {
            other.health.release_trial();
        }
        Err(last.unwrap_or_else(|| ConnectError::timeout(Phase::Tcp, cfg.connect_deadline.0, true)))
    }
}
