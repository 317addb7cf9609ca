//! Routing one connection: bypass (`no_proxy`) goes direct, a target that
//! was just found dead is answered at once, everything else goes through the
//! pool's attempt engine (`pool::attempt`: strategy order, racing, retries,
//! backoff, one deadline, fault attribution).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::noproxy::NoProxy;
use crate::config::Config;
use crate::pool::body_suspects::BodySuspects;
use crate::pool::{attempt, Member, Outcome, Pool, Traffic};
use crate::upstream::{
    Conn, ConnectContext, ConnectError, FaultClass, Host, HttpConn, NoopObserver, Resolver, Target,
    UpstreamSpec,
};

/// Where a connection went.
#[derive(Debug, Clone)]
pub enum NextHop {
    /// `no_proxy` matched (or no upstreams configured).
    Bypass,
    /// Every upstream was out and `fallback = "direct"` applied.
    Degraded,
    Upstream(Arc<Member>),
}

impl NextHop {
    pub fn name(&self) -> &str {
        match self {
            NextHop::Bypass => "direct(bypass)",
            NextHop::Degraded => "direct(degraded)",
            NextHop::Upstream(m) => m.name(),
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
    pub dead: DeadTargets,
    /// Upstreams whose response bodies for a target stalled or broke off
    /// (`pool::body_suspects`): put last for it until a verdict.
    pub body_suspects: Arc<BodySuspects>,
}

enum Decision {
    Fail(ConnectError),
    Direct(NextHop),
    Pool(Vec<Arc<Member>>),
}

/// A routing decision for one plain-HTTP request (see [`Router::plain_plan`]).
pub struct PlainPlan(Decision);

impl PlainPlan {
    /// Routes an idle connection may be reused on, most preferred first.
    pub fn routes(&self) -> Vec<NextHop> {
        match &self.0 {
            Decision::Fail(_) => Vec::new(),
            Decision::Direct(r) => vec![r.clone()],
            Decision::Pool(c) => c.iter().cloned().map(NextHop::Upstream).collect(),
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

/// Targets that two upstreams (or the direct path) could not reach, answered
/// at once for a few seconds so one client looping on a dead host costs the
/// pool nothing. Bounded: when full, the oldest half is dropped.
#[derive(Default)]
pub struct DeadTargets {
    map: std::sync::Mutex<std::collections::HashMap<Target, (Instant, ConnectError)>>,
}

const DEAD_TARGETS_MAX: usize = 4096;

impl DeadTargets {
    pub fn get(&self, t: &Target, ttl: Duration) -> Option<ConnectError> {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match m.get(t) {
            Some((at, e)) if at.elapsed() < ttl => Some(e.clone()),
            Some(_) => {
                m.remove(t);
                None
            }
            None => None,
        }
    }

    pub fn put(&self, t: &Target, e: &ConnectError, ttl: Duration) {
        if ttl.is_zero() {
            return;
        }
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= DEAD_TARGETS_MAX {
            m.retain(|_, (at, _)| at.elapsed() < ttl);
            if m.len() >= DEAD_TARGETS_MAX {
                m.clear();
            }
        }
        m.insert(t.clone(), (Instant::now(), e.clone()));
    }
}

enum Established {
    Tunnel(Conn),
    Http(HttpConn),
}

impl Router {
    pub fn new(cfg: &Config) -> Self {
        let ctx = ConnectContext::new(Resolver::new(cfg.resolve.clone()), cfg.timeouts);
        Router {
            ctx,
            pool: Pool::new(cfg.upstreams.clone(), cfg.pool.clone(), cfg.breaker.clone()),
            table: ArcSwap::from_pointee(RouteTable {
                no_proxy: cfg.no_proxy.clone(),
                bypass_loopback: cfg.bypass_loopback,
            }),
            direct: UpstreamSpec::direct("direct"),
            dead: DeadTargets::default(),
            body_suspects: Arc::default(),
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
                return Decision::Direct(NextHop::Bypass);
            }
        } else if table.no_proxy.bypass(&target.host.bare(), target.port) {
            return Decision::Direct(NextHop::Bypass);
        }
        self.count_body_faults();
        let mut plan = self.pool.plan(target, traffic);
        self.body_suspects.demote(target, &mut plan.members);
        if plan.breakers_open {
            return Decision::Fail(ConnectError::NoRoute(
                "every upstream's circuit breaker is open".into(),
            ));
        }
        if plan.degrade_direct {
            tracing::warn!(target = %target, "all upstreams unavailable: degraded to direct");
            return Decision::Direct(NextHop::Degraded);
        }
        if plan.members.is_empty() {
            Decision::Direct(NextHop::Bypass)
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

    /// Counts the body faults another upstream's whole answer confirmed.
    fn count_body_faults(&self) {
        for (m, n) in self.body_suspects.take_blame() {
            tracing::warn!(
                upstream = m.name(),
                faults = n,
                "responses cut or unanswered through this upstream were delivered by another: counted against it"
            );
            for _ in 0..n {
                let e = ConnectError::Io {
                    phase: crate::upstream::Phase::FirstByte,
                    detail: "response cut short or never answered (another upstream delivered it)"
                        .into(),
                    proxy: true,
                };
                self.pool.report(&m, Outcome::UpstreamFault(e));
            }
        }
    }

    /// A target recently found dead answers at once.
    fn known_dead(&self, target: &Target) -> Result<(), ConnectError> {
        let ttl = self.pool.settings().target_fail_cache;
        match self.dead.get(target, ttl) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn remember(&self, target: &Target, e: &ConnectError) {
        if e.fault() == FaultClass::Target {
            self.dead
                .put(target, e, self.pool.settings().target_fail_cache);
        }
    }

    /// Opens a tunnel to `target`.
    pub async fn tunnel(&self, target: &Target) -> Result<(Conn, NextHop), ConnectError> {
        self.known_dead(target)?;
        let r = match self.decide(target, Traffic::Tunnel) {
            Decision::Fail(e) => Err(e),
            Decision::Direct(r) => self
                .direct
                .connect_tunnel(target, &self.ctx, &mut NoopObserver)
                .await
                .map(|c| (c, r)),
            Decision::Pool(cands) => self
                .through_pool(&cands, target, Traffic::Tunnel)
                .await
                .map(|(e, r)| match e {
                    Established::Tunnel(c) => (c, r),
                    Established::Http(h) => (h.conn, r),
                }),
        };
        if let Err(e) = &r {
            self.remember(target, e);
        }
        r
    }

    /// Opens a connection for plain-HTTP forwarding, following `plan`.
    pub async fn http_conn(
        &self,
        plan: PlainPlan,
        target: &Target,
    ) -> Result<(HttpConn, NextHop), ConnectError> {
        self.known_dead(target)?;
        let r = match plan.0 {
            Decision::Fail(e) => Err(e),
            Decision::Direct(r) => self
                .direct
                .connect_for_http(target, &self.ctx, &mut NoopObserver)
                .await
                .map(|c| (c, r)),
            Decision::Pool(cands) => {
                self.through_pool(&cands, target, Traffic::Plain)
                    .await
                    .map(|(e, r)| match e {
                        Established::Http(h) => (h, r),
                        Established::Tunnel(c) => (
                            HttpConn {
                                conn: c,
                                absolute_form: false,
                                proxy_authorization: None,
                            },
                            r,
                        ),
                    })
            }
        };
        if let Err(e) = &r {
            self.remember(target, e);
        }
        r
    }

    async fn through_pool(
        &self,
        cands: &[Arc<Member>],
        target: &Target,
        traffic: Traffic,
    ) -> Result<(Established, NextHop), ConnectError> {
        let ctx = &self.ctx;
        let budget = self.pool.budget();
        // Following the pool: a member a discovery round or reload added
        // while this connection was being made is tried too.
        let (est, m) = attempt::connect(
            &self.pool,
            cands,
            Some(traffic),
            budget,
            |m: Arc<Member>| {
                use tracing::Instrument;
                let span = tracing::debug_span!("attempt", upstream = m.name(), target = %target);
                async move {
                    let mut obs = NoopObserver;
                    match traffic {
                        Traffic::Tunnel => m
                            .spec()
                            .connect_tunnel(target, ctx, &mut obs)
                            .await
                            .map(Established::Tunnel),
                        Traffic::Plain => m
                            .spec()
                            .connect_for_http(target, ctx, &mut obs)
                            .await
                            .map(Established::Http),
                    }
                }
                .instrument(span)
            },
        )
        .await?;
        Ok((est, NextHop::Upstream(m)))
    }
}
