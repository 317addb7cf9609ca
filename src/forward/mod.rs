//! Plain-HTTP forwarding (absolute-form requests).
//!
//! One request: plan (the same decision picks an idle connection and, on a
//! miss, dials) → send with a `response_head` deadline → classify the answer.
//! A safe request (idempotent, no body) may be hedged on a second upstream
//! (or a new connection to the only one) after `hedge_after` (first answer
//! wins, the other is cancelled) and is
//! retried on another upstream after a 407, a proxy's own gateway error, a
//! broken fresh connection or a response-head timeout. An unsafe one is sent
//! once, on a fresh connection (a pooled one may be closed under it); a
//! connection that fails before the request was written hands it back
//! unsent, so even a POST is then retried.
//!
//! Whose fault: the client's broken body is answered 400 and blamed on
//! nobody; a pooled connection closed by the server is blamed on nobody;
//! the rest counts against the upstream that failed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Incoming};

mod checkin;
mod exchange;
mod expect;
mod headers;
mod upgrade;

pub use headers::strip_hop_by_hop;
pub use upgrade::{wants_upgrade, Upgrade};

use checkin::Checkin;
use exchange::{Answer, Exchange};
use expect::{expects_continue, ContinueGate, Gated};
use headers::{idempotent, proxy_auth_error, proxy_gateway_error};

use crate::body::{ClientBody, IdleBody};
use crate::config::adaptive::HedgeWindow;
use crate::http_client::IdlePool;
use crate::pool::{Member, Outcome};
use crate::route::{NextHop, Router};
use crate::upstream::{ConnectError, Scheme, Target};

pub type OutBody = Either<Gated<ClientBody<Incoming>>, Empty<Bytes>>;

/// A forwarded response: the upstream's body under the `body_idle` deadline
/// (its end waits until the connection is back in the idle pool).
pub type ForwardedBody = IdleBody<Incoming, Checkin>;

/// Why a forwarded request failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("upstream failed before answering: {0}")]
    Upstream(String),
    #[error("no response head from {upstream} within {}ms", after.as_millis())]
    Timeout { upstream: String, after: Duration },
    /// The client's own request body broke (bad chunking, abandoned upload).
    #[error("the request body from the client was malformed or cut short: {0}")]
    Client(String),
}

/// Idle connections are keyed by pool member identity, never by name.
#[derive(Clone, PartialEq, Eq, Hash)]
enum PoolKey {
    /// An HTTP(S) proxy: one connection serves any target.
    Proxy(u64),
    /// A tunnel through a SOCKS upstream to one target.
    Tunnel(u64, Target),
    Direct(Target),
}

/// Upper bound on idle connections across all keys.
const IDLE_MAX_TOTAL: usize = 8192;
pub struct Forwarder {
    idle: checkin::Idle,
    /// Idle lifetime of pooled connections to origins (`[pool] idle_timeout`).
    direct_idle: Duration,
    via: bool,
    /// `[timeouts] expect_continue`.
    expect_wait: Duration,
    /// Recent response-head latencies, for `hedge_after = "auto"`.
    heads: HedgeWindow,
}

/// Watches a response body through upstream `m` for `target`. A stall or
/// break-off truncates the answer (nothing can be retried once bytes went
/// out) and makes (`m`, `target`) a suspect: alone it cannot tell `m` from
/// an origin that dies mid-body. Another upstream's whole answer for
/// `target` then counts the faults against `m`; another upstream cutting it
/// too clears everyone (pool/body_suspects.rs).
fn watch_body(m: Arc<Member>, router: &Router, target: &Target) -> crate::body::OnEnd {
    use crate::body::{BodyEnd, BodyFault};
    let suspects = router.body_suspects.clone();
    let target = target.clone();
    Box::new(move |end| {
        let kind = match end {
            BodyEnd::Complete => return suspects.completed(&m, &target),
            BodyEnd::Fault(BodyFault::Stalled(_)) => "stalled",
            BodyEnd::Fault(BodyFault::Broken) => "broken",
        };
        metrics::counter!("proxyguard_responses_cut_total", "upstream" => m.name().to_string(), "kind" => kind).increment(1);
        let verdict = suspects.fault(&m, &target);
        tracing::warn!(upstream = m.name(), target = %target, kind, ?verdict, "response body cut short");
    })
}

/// A pooled connection to `m` idle for `idle` failed on reuse: its idle
/// connections are retired sooner from now on (logged once per upstream).
fn learn_idle_cut(router: &Router, m: &Member, idle: Duration) {
    let configured = router.pool.settings().upstream_idle;
    let Some((limit, first)) = m.idle_cut.learn(idle, configured) else {
        return;
    };
    let (idle_ms, limit_ms) = (idle.as_millis() as u64, limit.as_millis() as u64);
    if first {
        tracing::info!(
            upstream = m.name(),
            idle_ms,
            limit_ms,
            "a pooled connection idle for {idle_ms} ms was cut on the path: idle connections to this upstream are now retired after {limit_ms} ms (`proxyguard doctor --hold` measures the cut; set [pool] upstream_idle below it)"
        );
    } else {
        tracing::debug!(
            upstream = m.name(),
            idle_ms,
            limit_ms,
            "idle cut learnt again: limit lowered"
        );
    }
}

fn key_for(route: &NextHop, target: &Target) -> PoolKey {
    match route {
        NextHop::Upstream(m) if matches!(m.spec().scheme, Scheme::Http | Scheme::Https) => {
            PoolKey::Proxy(m.id)
        }
        NextHop::Upstream(m) => PoolKey::Tunnel(m.id, target.clone()),
        _ => PoolKey::Direct(target.clone()),
    }
}

fn member(route: &NextHop) -> Option<&Arc<Member>> {
    match route {
        NextHop::Upstream(m) => Some(m),
        _ => None,
    }
}

/// Per-request retry state.
struct Tries {
    n: u32,
    stale: u32,
    /// Idempotent with no body: may be sent again after it went out.
    safe: bool,
    /// Set by the client's body when it broke (the client's own fault).
    client_failed: Arc<AtomicBool>,
    /// The request body for the next try (an unsent request gives it back).
    body: Option<OutBody>,
    /// Upstreams excluded from the next plan (failed this request).
    excluded: Vec<Arc<Member>>,
    /// Upstream proxies that answered this request with a gateway error.
    gateway_failed: Vec<Arc<Member>>,
}

impl Tries {
    fn can_retry(&self) -> bool {
        self.safe && self.n < MAX_TRIES
    }

    fn client_fault(&self) -> bool {
        self.client_failed.load(Ordering::Relaxed)
    }

    /// Counts `outcome` against the upstream behind `route` (if any) and
    /// leaves it out of the next plan.
    fn blame(&mut self, router: &Router, route: &NextHop, outcome: Outcome) {
        if let Some(m) = member(route) {
            router.pool.report(m, outcome);
            self.excluded.push(m.clone());
        }
    }
}

/// What judging one exchange decided: the answer, an error, or `None` to
/// try again.
type Judged = Result<Option<(Response<Incoming>, NextHop, Checkin)>, ForwardError>;

const MAX_TRIES: u32 = 3;
const MAX_STALE: u32 = 3;

impl Forwarder {
    /// `upstream_idle` only bounds the pool here; the request path reads
    /// the current value from the pool settings (it changes on reload).
    pub fn new(
        per_host: usize,
        idle_timeout: Duration,
        upstream_idle: Duration,
        via: bool,
        expect_wait: Duration,
    ) -> Self {
        let ceiling = idle_timeout.max(upstream_idle);
        Forwarder {
            idle: Arc::new(IdlePool::new(per_host, IDLE_MAX_TOTAL, ceiling)),
            direct_idle: idle_timeout,
            via,
            expect_wait,
            heads: HedgeWindow::default(),
        }
    }

    /// `hedge_after` now (see [`HedgeWindow`]).
    fn hedge_after(&self, router: &Router) -> Option<Duration> {
        self.heads.delay(router.pool.settings().hedge_after)
    }

    /// `Via: 1.1 proxyguard` on a forwarded request or response, with
    /// `[http] via = true`.
    fn add_via(&self, h: &mut http::HeaderMap) {
        if self.via {
            h.append(header::VIA, HeaderValue::from_static("1.1 proxyguard"));
        }
    }

    /// How long a pooled connection on `route` may have been idle.
    fn idle_limit(&self, router: &Router, route: &NextHop) -> Duration {
        match route {
            NextHop::Upstream(m) => m.idle_cut.limit(router.pool.settings().upstream_idle),
            _ => self.direct_idle,
        }
    }

    /// Forwards `req` to `target`.
    pub async fn forward(
        &self,
        router: &Router,
        target: &Target,
        req: Request<Incoming>,
    ) -> Result<(Response<ForwardedBody>, NextHop), ForwardError> {
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        self.add_via(&mut parts.headers);
        let empty = body.is_end_stream();
        let safe = empty && idempotent(&parts.method);
        let (body, client_failed) = ClientBody::new(body);
        // `Expect: 100-continue`: the body waits for the upstream's verdict.
        let gate = (!empty && expects_continue(&parts.headers))
            .then(|| Arc::new(ContinueGate::new(self.expect_wait)));
        let body = match &gate {
            Some(g) => {
                parts.extensions.insert(g.clone());
                Gated::new(body, g.clone())
            }
            None => Gated::open(body),
        };
        let body: OutBody = if empty {
            Either::Right(Empty::new())
        } else {
            Either::Left(body)
        };
        let body_idle = router.ctx.timeouts.body_idle;
        let mut tries = Tries {
            n: 0,
            stale: 0,
            safe,
            client_failed,
            body: Some(body),
            excluded: Vec::new(),
            gateway_failed: Vec::new(),
        };
        loop {
            tries.n += 1;
            // An unsafe request never goes on a pooled connection: a proxy
            // may close an idle one (tinyproxy closes after every response
            // without saying so) just as the request is written, and then it
            // cannot be retried. A fresh connection costs one handshake.
            let exchange = if safe {
                let fresh = tries.stale > 0;
                self.hedged(router, target, &parts, &tries.excluded, fresh)
                    .await
            } else {
                let b = tries
                    .body
                    .take()
                    .unwrap_or_else(|| Either::Right(Empty::new()));
                let plan = router.plain_plan(target).excluding(&tries.excluded);
                self.exchange(router, target, &parts, b, None, plan).await
            };
            match self.judge(router, target, exchange, &mut tries)? {
                Some((resp, route, conn)) => {
                    let (mut p, b) = resp.into_parts();
                    self.add_via(&mut p.headers);
                    let mut b = IdleBody::new(b, body_idle);
                    // With a request body the connection may still be
                    // sending it: then it goes back in the background.
                    if empty {
                        b = b.end_gate(conn);
                    }
                    if let Some(m) = member(&route) {
                        b = b.on_end(watch_body(m.clone(), router, target));
                    }
                    if let Some(g) = gate.filter(|g| g.answered()) {
                        // Answered before the body was asked for: the
                        // client never sends it; the upstream connection
                        // closes once this response has been passed on.
                        b = b.on_drop(Box::new(move || g.stop()));
                    }
                    return Ok((Response::from_parts(p, b), route));
                }
                None => continue,
            }
        }
    }

    /// Decides what an exchange means: the response to return, an error, or
    /// `None` to try again. Every upstream's part in it is reported once.
    fn judge(&self, router: &Router, target: &Target, ex: Exchange, tries: &mut Tries) -> Judged {
        match ex {
            Exchange::NoConnection(e) => Err(ForwardError::Connect(e)),
            Exchange::Answered(a) => self.on_answer(router, target, a, tries),
            Exchange::Stale {
                unsent,
                route,
                idle,
            } => on_stale(router, &route, unsent, idle, tries),
            Exchange::Broken {
                route,
                error,
                unsent,
            } => on_broken(router, &route, error, unsent, tries),
            Exchange::TimedOut { route, after } => {
                tries.blame(router, &route, Outcome::no_answer_within(after));
                if tries.can_retry() {
                    return Ok(None);
                }
                Err(ForwardError::Timeout {
                    upstream: route.name().to_string(),
                    after,
                })
            }
        }
    }

    /// An answer: a 407 or a proxy's own gateway error goes to another
    /// upstream when it may; anything else is the client's response.
    fn on_answer(&self, router: &Router, target: &Target, a: Answer, tries: &mut Tries) -> Judged {
        let m = member(&a.route).cloned();
        if let (true, Some(m), 407) = (a.absolute, &m, a.resp.status().as_u16()) {
            // A 407 from our upstream proxy is its own auth failure,
            // never meant for our client: count it and try another.
            let err = proxy_auth_error(&a.resp, a.had_auth);
            router.pool.report(m, Outcome::UpstreamFault(err.clone()));
            if tries.can_retry() {
                tries.excluded.push(m.clone());
                return Ok(None);
            }
            return Err(ForwardError::Connect(err));
        }
        let gateway_error = a.absolute && proxy_gateway_error(&a.resp);
        if let (true, true, Some(m)) = (gateway_error, tries.can_retry(), &m) {
            tries.gateway_failed.push(m.clone());
            tries.excluded.push(m.clone());
            if untried_remains(router, target, tries) {
                tracing::debug!(
                    upstream = m.name(),
                    status = a.resp.status().as_u16(),
                    "gateway error from upstream proxy; retrying on another"
                );
                metrics::counter!("proxyguard_retries_total").increment(1);
                return Ok(None);
            }
        }
        if !gateway_error {
            // Another upstream served what these could not: that was
            // their fault, not the origin's.
            for f in tries
                .gateway_failed
                .iter()
                .filter(|f| m.as_ref().is_none_or(|m| !Arc::ptr_eq(f, m)))
            {
                let e = ConnectError::ProxyStatus {
                    status: 502,
                    reason: "gateway error another upstream did not have".into(),
                };
                router.pool.report(f, Outcome::UpstreamFault(e));
            }
        }
        let conn = Checkin::new(self.idle.clone(), a.key, a.tx);
        Ok(Some((a.resp, a.route, conn)))
    }
}

/// Whether the plan still holds an upstream this request did not try.
fn untried_remains(router: &Router, target: &Target, tries: &Tries) -> bool {
    router
        .plain_plan(target)
        .routes()
        .iter()
        .filter_map(member)
        .any(|x| !tries.excluded.iter().any(|t| Arc::ptr_eq(t, x)))
}

/// The server closed a pooled connection: nobody's fault, but a sign of an
/// idle cut on the path. The request goes again on a fresh connection.
fn on_stale(
    router: &Router,
    route: &NextHop,
    unsent: Option<Request<OutBody>>,
    idle: Duration,
    tries: &mut Tries,
) -> Judged {
    if let Some(m) = member(route) {
        learn_idle_cut(router, m, idle);
    }
    if tries.client_fault() {
        return Err(ForwardError::Client("request body failed".into()));
    }
    tries.stale += 1;
    tries.n -= 1;
    let again = match unsent {
        Some(req) => {
            tries.body = Some(req.into_body());
            true
        }
        None => tries.safe,
    };
    if again && tries.stale <= MAX_STALE {
        return Ok(None);
    }
    Err(ForwardError::Upstream(
        "a reused connection was closed by the upstream".into(),
    ))
}

/// A fresh connection broke during the exchange: the client's fault when
/// its body broke, else the upstream's; an unsent or safe request goes again.
fn on_broken(
    router: &Router,
    route: &NextHop,
    error: String,
    unsent: Option<Request<OutBody>>,
    tries: &mut Tries,
) -> Judged {
    if tries.client_fault() {
        if let Some(m) = member(route) {
            router.pool.report(m, Outcome::ClientFault);
        }
        return Err(ForwardError::Client(error));
    }
    tries.blame(router, route, Outcome::broke_before_answer());
    if let Some(req) = unsent {
        tries.body = Some(req.into_body());
        if tries.n < MAX_TRIES {
            return Ok(None);
        }
    } else if tries.can_retry() {
        tracing::debug!(error = %error, "request failed before an answer; retrying (idempotent, no body)");
        return Ok(None);
    }
    Err(ForwardError::Upstream(error))
}
