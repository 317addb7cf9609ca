//! One plain HTTP request through a route: the body held in full when
//! small, of known or unknown length (so it can be sent again, and signed;
//! prefix.rs), backends tried in zone order through the attempt engine
//! (attempt.rs), the retry rule, the answer passed on under `body_idle`
//! (watch.rs; a good GET also kept for the fallback), or the fallback.
//!
//! The retry rule: a connection failure always goes to another backend
//! (nothing was sent); a failed or timed-out exchange only when the body is
//! held in full (a streamed body is gone once sent, and an empty replay
//! would run a different request); a 502–504 only for an idempotent
//! request with its body held (the backend may have acted on a POST before
//! answering 502).
//!
//! A safe request (GET, HEAD or OPTIONS without a body) still unanswered
//! after `[pool] hedge_after` is also sent to the next backend in zone
//! order; the first good answer wins and the other exchange is dropped (not
//! blamed: its backend may only be slow).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HeaderValue;
use http::HeaderMap;
use http::{Method, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};

use super::answer::text;
use super::attempt::{BackendConn, BackendPlan, Dial};
use super::backend::AttemptError;
use super::prefix::{self, Prefix};
use super::{cache, full_body, incoming_body, watch, ReqBody, RespBody, ReverseRoute};
use crate::body::IdleBody;
use crate::forward::strip_hop_by_hop;
use crate::pool::Member;

/// The request body for each attempt.
enum ReqSource {
    /// Read in full: every attempt sends it (with its trailers, if any).
    Held(Bytes, Option<HeaderMap>),
    /// Streamed: the first attempt that sends takes it.
    Stream(Option<ReqBody>),
}

impl ReqSource {
    fn next(&mut self) -> Option<ReqBody> {
        match self {
            ReqSource::Held(b, None) => Some(full_body(b.clone())),
            ReqSource::Held(b, Some(t)) => Some(prefix::held_body(b.clone(), Some(t.clone()))),
            ReqSource::Stream(s) => s.take(),
        }
    }

    /// Whether another backend may still get the request.
    fn may_send_again(&self) -> bool {
        match self {
            ReqSource::Held(..) => true,
            ReqSource::Stream(s) => s.is_some(),
        }
    }

    fn held(&self) -> Option<&Bytes> {
        match self {
            ReqSource::Held(b, _) => Some(b),
            ReqSource::Stream(_) => None,
        }
    }
}

/// One request as every attempt sends it.
struct Outgoing {
    parts: http::request::Parts,
    client_host: Option<HeaderValue>,
    body: ReqSource,
    /// A 502–504 may go to another backend.
    retry_5xx: bool,
}

/// One exchange's result, and the backend it was with.
type Sent = (Arc<Member>, Result<Response<Incoming>, AttemptError>);

/// An answer a hedge may win with: not a gateway error another backend
/// might do better than.
fn good(sent: &Result<Response<Incoming>, AttemptError>) -> bool {
    sent.as_ref()
        .is_ok_and(|r| !matches!(r.status().as_u16(), 502..=504))
}

/// What one attempt on one backend came to.
enum Tried {
    Answered(Response<Incoming>),
    /// Failed; another backend may take the request.
    Next(String),
    /// Failed; nothing may be sent again.
    Stop(String),
}

fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

impl ReverseRoute {
    /// Forwards one plain HTTP request (`parts` already carries the
    /// forwarded headers).
    pub(super) async fn handle_http(
        self: Arc<Self>,
        parts: http::request::Parts,
        client_host: Option<HeaderValue>,
        body: Incoming,
        peer: SocketAddr,
        started: Instant,
    ) -> Response<RespBody> {
        let mut out = match self.outgoing(parts, client_host, body).await {
            Ok(o) => o,
            Err(r) => return r,
        };
        let method = out.parts.method.clone();
        let cache_key = format!("{} {}", method, out.parts.uri);
        let cacheable_request = cache::request_may_use_cache(&out.parts.headers);
        match self.send_http(&mut out).await {
            Ok((resp, m)) => {
                tracing::info!(target: "access", kind = "reverse", client = %peer, method = %method, path = %out.parts.uri, backend = m.name(), status = resp.status().as_u16(), duration_ms = started.elapsed().as_millis() as u64, "request");
                self.pass_on(&method, resp, m, cache_key, cacheable_request)
                    .await
            }
            Err(why) => self.fallback(
                &method,
                cacheable_request.then_some(cache_key.as_str()),
                why,
                peer,
                started,
            ),
        }
    }

    /// Reads the body (held in full when small) and signs the request.
    async fn outgoing(
        &self,
        mut parts: http::request::Parts,
        client_host: Option<HeaderValue>,
        body: Incoming,
    ) -> Result<Outgoing, Response<RespBody>> {
        let body = self.read_body(body).await?;
        if self.cfg.sign.is_some() {
            let Some(b) = body.held() else {
                return Err(text(StatusCode::PAYLOAD_TOO_LARGE, &format!("proxyguard: only a body held in full can be signed: over route.retry_body_limit ({} bytes), or not received within the route timeout", self.cfg.retry_body_limit)));
            };
            if let Err(e) = self.sign(&mut parts, b) {
                return Err(text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("proxyguard: signing failed: {e}"),
                ));
            }
        }
        let retry_5xx = idempotent(&parts.method) && body.held().is_some();
        Ok(Outgoing {
            parts,
            client_host,
            body,
            retry_5xx,
        })
    }

    /// Sends `out` to backends in zone order until one answers. The error
    /// says why none could (the last failure).
    async fn send_http(
        &self,
        out: &mut Outgoing,
    ) -> Result<(Response<Incoming>, Arc<Member>), String> {
        let plan = self.plan();
        let timeout = self.cfg.timeout.0;
        let hedge = self.hedge_after(out);
        let mut last_err: Option<String> = None;
        loop {
            // The route's `timeout` covers one attempt, connecting included.
            let until = Instant::now() + timeout;
            let next = self.connect_next(&plan, timeout, Dial::Request, &mut last_err);
            let Some(c) = next.await else {
                break;
            };
            let left = until.saturating_duration_since(Instant::now());
            let (m, sent) = match hedge {
                Some(delay) => {
                    let host = out.client_host.as_ref();
                    self.hedged(c, &out.parts, host, &plan, (left, delay)).await
                }
                None => {
                    let m = c.m.clone();
                    let mut make = || out.body.next();
                    let host = out.client_host.as_ref();
                    (
                        m,
                        self.exchange_within(c, &out.parts, host, &mut make, left)
                            .await,
                    )
                }
            };
            match self.judge(&m, sent, out, &plan) {
                Tried::Answered(resp) => return Ok((resp, m)),
                Tried::Next(e) => last_err = Some(e),
                Tried::Stop(e) => {
                    last_err = Some(e);
                    break;
                }
            }
        }
        Err(last_err.unwrap_or_else(|| "no backend available".into()))
    }

    /// The hedge delay for `out`, if it is a safe request (no body) and
    /// `hedge_after` is not off.
    fn hedge_after(&self, out: &Outgoing) -> Option<Duration> {
        let safe = matches!(
            out.parts.method,
            Method::GET | Method::HEAD | Method::OPTIONS
        ) && matches!(&out.body, ReqSource::Held(b, None) if b.is_empty());
        if !safe {
            return None;
        }
        self.heads.delay(self.pool.settings().hedge_after)
    }

    /// The exchange on `c`; after `delay` without an answer, the request
    /// also goes to the next untried backend. The first good answer wins
    /// (the other exchange is dropped); a failure is reported and the other
    /// awaited; with neither good, the lead's result is judged.
    async fn hedged(
        &self,
        c: BackendConn,
        parts: &http::request::Parts,
        host: Option<&HeaderValue>,
        plan: &BackendPlan,
        (left, delay): (Duration, Duration),
    ) -> Sent {
        let started = Instant::now();
        let lead = c.m.clone();
        let mut empty = || Some(full_body(Bytes::new()));
        let first = self.exchange_within(c, parts, host, &mut empty, left);
        tokio::pin!(first);
        tokio::select! {
            r = &mut first => return (lead, r),
            _ = tokio::time::sleep(delay.min(left)) => {}
        }
        if !plan.another_left() {
            return (lead, first.await);
        }
        metrics::counter!("proxyguard_hedges_total").increment(1);
        tracing::debug!(
            backend = lead.name(),
            after_ms = delay.as_millis() as u64,
            "hedging on the next backend"
        );
        let rest = left.saturating_sub(started.elapsed());
        let second = async {
            let mut why = None;
            let c = self
                .connect_next(plan, rest, Dial::Request, &mut why)
                .await?;
            let m = c.m.clone();
            let mut empty = || Some(full_body(Bytes::new()));
            Some((
                m,
                self.exchange_within(c, parts, host, &mut empty, rest).await,
            ))
        };
        tokio::pin!(second);
        tokio::select! {
            r = &mut first => {
                if good(&r) {
                    return (lead, r);
                }
                match second.await {
                    Some((m, r2)) if good(&r2) => {
                        self.lost(&lead, &r);
                        metrics::counter!("proxyguard_hedges_won_total").increment(1);
                        (m, r2)
                    }
                    Some((m, r2)) => {
                        self.lost(&m, &r2);
                        (lead, r)
                    }
                    None => (lead, r),
                }
            }
            r2 = &mut second => match r2 {
                Some((m, r2)) if good(&r2) => {
                    metrics::counter!("proxyguard_hedges_won_total").increment(1);
                    (m, r2)
                }
                Some((m, r2)) => {
                    self.lost(&m, &r2);
                    (lead, first.await)
                }
                None => (lead, first.await),
            },
        }
    }

    /// Reports an exchange that is not judged (the other side of a hedge
    /// is): a failure or a gateway error counts against its backend.
    fn lost(&self, m: &Member, r: &Result<Response<Incoming>, AttemptError>) {
        match r {
            Err(e) => {
                self.failed(m, e);
            }
            Ok(resp) if !good(r) => self.refused_answer(m, resp.status().as_u16(), "backend"),
            Ok(_) => {}
        }
    }

    /// What one exchange means under the retry rule (its outcome reported).
    fn judge(
        &self,
        m: &Member,
        sent: Result<Response<Incoming>, AttemptError>,
        out: &Outgoing,
        plan: &BackendPlan,
    ) -> Tried {
        let resp = match sent {
            Ok(resp) => resp,
            Err(e) => {
                let why = self.failed(m, &e);
                return if out.body.may_send_again() {
                    Tried::Next(why)
                } else {
                    Tried::Stop(why)
                };
            }
        };
        let status = resp.status().as_u16();
        if matches!(status, 502..=504) && out.retry_5xx && plan.another_left() {
            self.refused_answer(m, status, "backend");
            return Tried::Next(format!("{}: answered {status}", m.name()));
        }
        Tried::Answered(resp)
    }

    /// A body that may be small (known to be, or of unknown length) is
    /// read up to `retry_body_limit` within the route's `timeout`: held in
    /// full if it ends within both, so that it can be sent again; otherwise
    /// (and for a body known to be larger) it streams and is sent once.
    async fn read_body(&self, body: Incoming) -> Result<ReqSource, Response<RespBody>> {
        if body.is_end_stream() {
            return Ok(ReqSource::Held(Bytes::new(), None));
        }
        let limit = self.cfg.retry_body_limit;
        if body.size_hint().exact().is_some_and(|n| n as usize > limit) {
            return Ok(ReqSource::Stream(Some(incoming_body(body))));
        }
        let deadline = tokio::time::Instant::now() + self.cfg.timeout.0;
        match prefix::read(body, limit, deadline).await {
            Ok(Prefix::Held(b, t)) => Ok(ReqSource::Held(b, t)),
            Ok(Prefix::Streaming(read, rest)) => {
                Ok(ReqSource::Stream(Some(prefix::streaming_body(read, rest))))
            }
            Err(e) => Err(text(StatusCode::BAD_REQUEST, &format!("proxyguard: {e}"))),
        }
    }

    /// The backend's answer to the client, its body under `body_idle` (a
    /// stall or a break is cut visibly and counted against `m`); a good GET
    /// is also remembered for the fallback.
    async fn pass_on(
        self: &Arc<Self>,
        method: &Method,
        resp: Response<Incoming>,
        m: Arc<Member>,
        cache_key: String,
        cacheable_request: bool,
    ) -> Response<RespBody> {
        let status = resp.status().as_u16();
        let (mut rp, rb) = resp.into_parts();
        strip_hop_by_hop(&mut rp.headers);
        let size = rb.size_hint().exact();
        let route = self.clone();
        let rb = IdleBody::<_>::new(rb, self.ctx.timeouts.body_idle).on_end(watch::blame_backend(
            m,
            move |m, o| {
                route.proto(m).cut.note();
                route.pool.report(m, o);
            },
        ));
        let Some(fb) = &self.cfg.fallback else {
            return Response::from_parts(rp, rb.boxed_unsync());
        };
        let small = size.is_some_and(|n| n as usize <= fb.max_body);
        if !(fb.cache_get.is_some()
            && *method == Method::GET
            && status == 200
            && cacheable_request
            && cache::response_may_be_stored(&rp.headers)
            && small)
        {
            return Response::from_parts(rp, rb.boxed_unsync());
        }
        match rb.collect().await {
            Ok(b) => {
                let b = b.to_bytes();
                self.cache
                    .put(cache_key, rp.status, rp.headers.clone(), b.clone());
                Response::from_parts(rp, full_body(b))
            }
            Err(e) => text(
                StatusCode::BAD_GATEWAY,
                &format!("proxyguard: backend body failed: {e}"),
            ),
        }
    }
}
