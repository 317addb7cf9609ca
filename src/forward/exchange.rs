//! One exchange with an upstream (idle connection or a new one through the
//! attempt engine, under the `response_head` deadline), and hedging a safe
//! request on a second upstream, or on a new connection to the only one.

use std::sync::Arc;
use std::time::Duration;

use http::Response;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use tokio::time::Instant;

use super::headers::build;
use super::{key_for, learn_idle_cut, member, Forwarder, OutBody, PoolKey};
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

/// An idle connection taken from the pool for one exchange.
pub(super) struct Pooled {
    tx: SendRequest<OutBody>,
    key: PoolKey,
    route: NextHop,
    /// How long it had been idle.
    idle: Duration,
}

/// Where a hedge goes.
enum HedgeTo {
    /// Another upstream than the lead's.
    Other,
    /// The lead's own upstream, on a new connection: the plan has no other,
    /// and the lead went out on a reused one, idle for `idle` (which a path
    /// may have forgotten without a word, or a proxy may hold unanswered).
    SameFresh { idle: Duration },
}

impl Forwarder {
    /// A safe request: the exchange, plus a second one if the first has not
    /// answered after `hedge_after` — on another upstream, or, when the
    /// plan has no other and the first went out on a reused connection, on
    /// a new connection to the same one. The first answer wins; the other
    /// is dropped (its connection closes).
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
        let pooled = if fresh {
            None
        } else {
            self.checkout(router, target, &routes)
        };
        let lead = match &pooled {
            Some(p) => member(&p.route).cloned(),
            None => routes.first().and_then(|r| member(r).cloned()),
        };
        let hedge_to = lead.as_ref().and_then(|lead| {
            let other = routes
                .iter()
                .filter_map(member)
                .any(|m| !Arc::ptr_eq(m, lead));
            match (other, &pooled) {
                (true, _) => Some(HedgeTo::Other),
                (false, Some(p)) => Some(HedgeTo::SameFresh { idle: p.idle }),
                (false, None) => None,
            }
        });
        let delay = hedge_to.as_ref().and_then(|_| self.hedge_after(router));
        let first = self.exchange(router, target, parts, empty(), pooled, plan);
        let (Some(lead), Some(hedge_to), Some(delay)) = (lead, hedge_to, delay) else {
            return first.await;
        };
        tokio::pin!(first);
        tokio::select! {
            o = &mut first => return o,
            _ = tokio::time::sleep(delay) => {}
        }
        metrics::counter!("proxyguard_hedges_total").increment(1);
        let (second_plan, reused) = match hedge_to {
            HedgeTo::Other => {
                tracing::debug!(target = %target, after_ms = delay.as_millis() as u64, "hedging on another upstream");
                let mut others: Vec<Arc<Member>> = excluded.to_vec();
                others.push(lead);
                (router.plain_plan(target).excluding(&others), None)
            }
            HedgeTo::SameFresh { idle } => {
                tracing::debug!(target = %target, upstream = lead.name(), after_ms = delay.as_millis() as u64, "hedging on a new connection to the same upstream");
                (
                    router.plain_plan(target).excluding(excluded),
                    Some((lead, idle)),
                )
            }
        };
        let second = self.exchange(router, target, parts, empty(), None, second_plan);
        tokio::pin!(second);
        tokio::select! {
            o = &mut first => match o {
                o @ Exchange::Answered(_) => o,
                _ => second.await,
            },
            o = &mut second => match o {
                o @ Exchange::Answered(_) => {
                    metrics::counter!("proxyguard_hedges_won_total").increment(1);
                    // A new connection to the same upstream answered while
                    // the reused one stayed silent: most likely a path that
                    // forgot it while idle (or a slow answer: then the
                    // lifetime is only shortened needlessly).
                    if let Some((m, idle)) = reused {
                        learn_idle_cut(router, &m, idle);
                    }
                    o
                }
                _ => first.await,
            },
        }
    }

    /// An idle connection on one of the plan's `routes`, most preferred first.
    fn checkout(&self, router: &Router, target: &Target, routes: &[NextHop]) -> Option<Pooled> {
        routes.iter().find_map(|route| {
            let key = key_for(route, target);
            let limit = self.idle_limit(router, route);
            self.idle
                .checkout_within(&key, limit)
                .map(|(tx, idle)| Pooled {
                    tx,
                    key,
                    route: route.clone(),
                    idle,
                })
        })
    }

    /// One exchange on `pooled`, or on a new connection through the attempt
    /// engine, under the `response_head` deadline.
    pub(super) async fn exchange(
        &self,
        router: &Router,
        target: &Target,
        parts: &http::request::Parts,
        body: OutBody,
        pooled: Option<Pooled>,
        plan: PlainPlan,
    ) -> Exchange {
        let (mut tx, key, route, absolute, auth, reused_after) = match pooled {
            Some(Pooled {
                tx,
                key,
                route,
                idle,
            }) => {
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
                self.heads.record(started.elapsed());
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
