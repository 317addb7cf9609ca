//! Routing one connection: bypass (`no_proxy`) goes direct, everything else
//! goes through the pool, trying the next candidate when one fails before
//! any client byte was sent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::noproxy::NoProxy;
use crate::config::Config;
use crate::pool::{Member, Pool, Traffic};
use crate::upstream::{
    Conn, ConnectContext, ConnectError, HttpConn, NoopObserver, PhaseObserver, Resolver, Target,
    UpstreamSpec,
};

/// Where a connection went.
#[derive(Debug, Clone)]
pub enum Route {
    /// `no_proxy` matched (or no upstreams configured).
    Bypass,
    Upstream(Arc<Member>),
}

impl Route {
    pub fn name(&self) -> &str {
        match self {
            Route::Bypass => "direct(bypass)",
            Route::Upstream(m) => m.name(),
        }
    }
}

/// Settings a reload may replace together.
pub struct RouteTable {
    pub no_proxy: NoProxy,
    pub bypass_loopback: bool,
    pub max_attempts: u32,
    pub connect_deadline: Duration,
}

pub struct Router {
    pub ctx: ConnectContext,
    pub pool: Pool,
    pub table: ArcSwap<RouteTable>,
    direct: UpstreamSpec,
}

impl Router {
    pub fn new(cfg: &Config) -> Self {
        let ctx = ConnectContext::new(Resolver::new(cfg.resolve.clone()), cfg.timeouts);
        Router {
            ctx,
            pool: Pool::new(cfg.upstreams.clone()),
            table: ArcSwap::from_pointee(RouteTable {
                no_proxy: cfg.no_proxy.clone(),
                bypass_loopback: cfg.bypass_loopback,
                max_attempts: cfg.file.pool.max_attempts,
                connect_deadline: cfg.file.pool.connect_deadline.0,
            }),
            direct: UpstreamSpec::direct("direct"),
        }
    }

    fn plan(&self, target: &Target, traffic: Traffic) -> Option<Vec<Arc<Member>>> {
        let table = self.table.load();
        let loopback = match &target.host {
            crate::upstream::Host::Ip(ip) => ip.is_loopback(),
            crate::upstream::Host::Name(n) => n == "localhost",
        };
        if loopback {
            if table.bypass_loopback {
                return None;
            }
        } else if table.no_proxy.bypass(&target.host.bare(), target.port) {
            return None;
        }
        let c = self.pool.candidates(traffic);
        if c.is_empty() {
            None
        } else {
            Some(c)
        }
    }

    /// The route a new connection would most likely take (for reusing an
    /// idle connection before opening one).
    pub fn preferred_route(&self, target: &Target, traffic: Traffic) -> Option<Route> {
        match self.plan(target, traffic) {
            None => Some(Route::Bypass),
            Some(c) => c.into_iter().next().map(Route::Upstream),
        }
    }

    /// Opens a tunnel to `target`.
    pub async fn tunnel(&self, target: &Target) -> Result<(Conn, Route), ConnectError> {
        self.tunnel_observed(target, &mut NoopObserver).await
    }

    pub async fn tunnel_observed(
        &self,
        target: &Target,
        obs: &mut dyn PhaseObserver,
    ) -> Result<(Conn, Route), ConnectError> {
        let Some(cands) = self.plan(target, Traffic::Tunnel) else {
            let c = self.direct.connect_tunnel(target, &self.ctx, obs).await?;
            return Ok((c, Route::Bypass));
        };
        match self.attempt(&cands, target, Op::Tunnel, obs).await? {
            (Established::Tunnel(c), r) => Ok((c, r)),
            (Established::Http(h), r) => Ok((h.conn, r)),
        }
    }

    /// Opens a connection for plain-HTTP forwarding to `target`.
    pub async fn http_conn(&self, target: &Target) -> Result<(HttpConn, Route), ConnectError> {
        let mut obs = NoopObserver;
        let Some(cands) = self.plan(target, Traffic::Plain) else {
            let c = self
                .direct
                .connect_for_http(target, &self.ctx, &mut obs)
                .await?;
            return Ok((c, Route::Bypass));
        };
        match self.attempt(&cands, target, Op::Http, &mut obs).await? {
            (Established::Http(h), r) => Ok((h, r)),
            (Established::Tunnel(c), r) => Ok((
                HttpConn {
                    conn: c,
                    absolute_form: false,
                    proxy_authorization: None,
                },
                r,
            )),
        }
    }

    async fn attempt(
        &self,
        cands: &[Arc<Member>],
        target: &Target,
        op: Op,
        obs: &mut dyn PhaseObserver,
    ) -> Result<(Established, Route), ConnectError> {
        let table = self.table.load();
        let deadline = Instant::now() + table.connect_deadline;
        let mut last = None;
        for m in cands.iter().take(table.max_attempts.max(1) as usize) {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let start = Instant::now();
            let fut = async {
                match op {
                    Op::Tunnel => m
                        .spec()
                        .connect_tunnel(target, &self.ctx, obs)
                        .await
                        .map(Established::Tunnel),
                    Op::Http => m
                        .spec()
                        .connect_for_http(target, &self.ctx, obs)
                        .await
                        .map(Established::Http),
                }
            };
            match tokio::time::timeout(remaining, fut).await {
                Ok(Ok(c)) => {
                    m.health.record_success(start.elapsed());
                    return Ok((c, Route::Upstream(m.clone())));
                }
                Ok(Err(e)) => {
                    tracing::debug!(upstream = m.name(), error = %e, "upstream attempt failed");
                    let retry = e.is_proxy_side();
                    if retry {
                        m.health.record_failure(&e);
                    }
                    last = Some(e);
                    if !retry {
                        break;
                    }
                }
                Err(_) => {
                    let e = ConnectError::timeout(
                        crate::upstream::Phase::Tcp,
                        table.connect_deadline,
                        true,
                    );
                    m.health.record_failure(&e);
                    last = Some(e);
                    break;
                }
            }
        }
        Err(last.unwrap_or_else(|| ConnectError::NoRoute("no upstream available".into())))
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
