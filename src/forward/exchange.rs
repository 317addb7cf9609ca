//! One exchange with an upstream (idle connection or a new one through the
//! attempt engine, under the `response_head` deadline), and hedging a safe
//! request on a second upstream.

use std::sync::Arc;
use std::time::Duration;

use http::Response;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use tokio::time::Instant;

use super::headers::build;
use super::{key_for, member, Forwarder, OutBody, PoolKey};
use crate::pool::Member;
use crate::route::{NextHop, PlainPlan, Router};
use crate::upstream::{ConnectError, Target};

/// An answer from the upstream (or the origin, going direct), with the
/// connection it came on.
pub(super) struct Answer {
    pub resp: Response<Incoming>,
    pub route: NextHop,
    pub key: PoolKey,
    pub tx: SendRequest<OutBody>,
    /// Sent in absolute form to an HTTP proxy (its 407 or 502 is its own).
    pub absolute: bool,
    pub had_auth: bool,
}

/// One exchange's result.
pub(super) enum Exchange {
    Answered(Answer),
    /// No connection could be made (the attempt engine already reported it).
    NoConnection(ConnectError),
    /// A pooled connection, idle for `idle`, was found closed; the request
    /// comes back unsent when hyper had not written it yet.
    Stale {
        unsent: Option<Request<OutBody>>,
        route: NextHop,
        idle: Duration,
    },
    /// A fresh connection failed during the exchange.
    Broken {
        route: NextHop,
        error: String,
        unsent: Option<Request<OutBody>>,
    },
    TimedOut {
        route: NextHop,
        after: Duration,
    },
}

impl Forwarder {
    /// A safe request: the exchange, plus a second one on another upstream
    /// if the first has not answered after `hedge_after`. The first answer
    /// wins; the other is dropped (its connection closes).
    pub(super) async fn hedged(
        &self,
        router: &Router,
        target: &Target,
        parts: &http::request::Parts,
        excluded: &[Arc<Member>],
        fresh: bool,
    ) -> Exchange {
        let empty = || Either::Right(Empty::new());
        let plan = router.plain_plan(target).excluding(excluded);
        let routes = plan.routes();
        // A hedge needs a second upstream besides the one the plan leads with.
        let lead = routes.first().and_then(|r| member(r).cloned());
        let hedge_to = routes.iter().skip(1).filter_map(member).next().is_some();
        let delay = match (&lead, hedge_to) {
            (Some(_), true) => self.hedge_after(router),
            _ => None,
        };
        let first = self.once(router, target, parts, empty(), plan, fresh);
        let (Some(lead), Some(delay)) = (lead, delay) else {
            return first.await;
        };
        let mut others: Vec<Arc<Member>> = excluded.to_vec();
        others.push(lead);
        tokio::pin!(first);
        tokio::select! {
            o = &mut first => return o,
            _ = tokio::time::sleep(delay) => {}
        }
        metrics::counter!("proxyguard_hedges_total").increment(1);
        tracing::debug!(target = %target, after_ms = delay.as_millis() as u64, "hedging on another upstream");
        let second_plan = router.plain_plan(target).excluding(&others);
        let second = self.once(router, target, parts, empty(), second_plan, true);
        tokio::pin!(second);
        tokio::select! {
            o = &mut first => match o {
                o @ Exchange::Answered(_) => o,
                _ => second.await,
            },
            o = &mut second => match o {
                o @ Exchange::Answered(_) => {
                    metrics::counter!("proxyguard_hedges_won_total").increment(1);
                    o
                }
                _ => first.await,
            },
        }
    }

    /// One exchange: an idle connection on a route the plan allows (most
    /// preferred first), else a new one through the attempt engine.
    pub(super) async fn once(
        &self,
        router: &Router,
        target: &Target,
        parts: &http::request::Parts,
        body: OutBody,
        plan: PlainPlan,
        fresh: bool,
    ) -> Exchange {
        let reused = if fresh {
            None
        } else {
            plan.routes().into_iter().find_map(|route| {
                let key = key_for(&route, target);
                let limit = self.idle_limit(router, &route);
                self.idle
                    .checkout_within(&key, limit)
                    .map(|(tx, idle)| (tx, key, route, idle))
            })
        };
        let (mut tx, key, route, absolute, auth, reused_after) = match reused {
            Some((tx, key, route, idle)) => {
                let auth = member(&route).and_then(|m| {
                    m.spec()
                        .credentials
                        .as_ref()
                        .map(crate::upstream::http_connect::basic_auth)
                });
                let absolute = matches!(key, PoolKey::Proxy(_));
                (tx, key, route, absolute, auth, Some(idle))
            }
            None => {
                // Dialling is the rare path with the largest future: boxed,
                // so every request does not carry (and move) its state.
                let (hc, route) = match Box::pin(router.http_conn(plan, target)).await {
                    Ok(x) => x,
                    Err(e) => return Exchange::NoConnection(e),
                };
                let key = key_for(&route, target);
                let tx = match Box::pin(crate::http_client::handshake::<_, OutBody>(hc.conn)).await
                {
                    Ok(tx) => tx,
                    Err(e) => {
                        return Exchange::Broken {
                            route,
                            error: e.to_string(),
                            unsent: None,
                        }
                    }
                };
                (
                    tx,
                    key,
                    route,
                    hc.absolute_form,
                    hc.proxy_authorization,
                    None,
                )
            }
        };
        let req = build(parts, target, absolute, auth.as_deref(), body);
        let limit = router.ctx.timeouts.response_head;
        let started = Instant::now();
        match tokio::time::timeout(limit, tx.try_send_request(req)).await {
            Err(_) => Exchange::TimedOut {
                route,
                after: limit,
            },
            Ok(Ok(resp)) => {
                self.record_head_latency(started.elapsed());
                Exchange::Answered(Answer {
                    resp,
                    route,
                    key,
                    tx,
                    absolute,
                    had_auth: auth.is_some(),
                })
            }
            Ok(Err(mut e)) => {
                let unsent = e.take_message();
                if let Some(idle) = reused_after {
                    Exchange::Stale {
                        unsent,
                        route,
                        idle,
                    }
                } else {
                    Exchange::Broken {
                        route,
                        error: e.into_error().to_string(),
                        unsent,
                    }
                }
            }
        }
    }
}
