//! Plain-HTTP forwarding (absolute-form requests) with per-upstream
//! connection reuse: a bounded set of idle keep-alive connections per
//! upstream (and per target when the upstream is a tunnel).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::route::{Route, Router};
use crate::upstream::{ConnectError, Target};

pub type OutBody = Either<Incoming, Empty<Bytes>>;

/// Why a forwarded request failed.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("upstream failed before answering: {0}")]
    Upstream(String),
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    upstream: String,
    /// None when the upstream is an HTTP proxy (one connection serves any host).
    target: Option<String>,
}

struct Idle {
    tx: SendRequest<OutBody>,
    since: Instant,
}

pub struct Forwarder {
    idle: Arc<Mutex<HashMap<Key, Vec<Idle>>>>,
    per_host: usize,
    idle_timeout: Duration,
    via: bool,
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the proxy credentials, which
/// must never travel further.
const HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including those named in `Connection`.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .chain(h.get_all("proxy-connection").iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in listed {
        h.remove(n);
    }
    for n in HOP {
        h.remove(*n);
    }
}

fn idempotent(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::TRACE
            | http::Method::PUT
            | http::Method::DELETE
    )
}

impl Forwarder {
    pub fn new(per_host: usize, idle_timeout: Duration, via: bool) -> Self {
        Forwarder {
            idle: Arc::new(Mutex::new(HashMap::new())),
            per_host,
            idle_timeout,
            via,
        }
    }

    fn checkout(&self, key: &Key) -> Option<SendRequest<OutBody>> {
        let mut map = self.idle.lock().ok()?;
        let list = map.get_mut(key)?;
        while let Some(i) = list.pop() {
            if i.since.elapsed() < self.idle_timeout && i.tx.is_ready() && !i.tx.is_closed() {
                return Some(i.tx);
            }
        }
        None
    }

    /// Closes idle connections to an upstream (on ejection).
    pub fn evict_upstream(&self, name: &str) {
        if let Ok(mut map) = self.idle.lock() {
            map.retain(|k, _| k.upstream != name);
        }
    }

    fn checkin_later(&self, key: Key, mut tx: SendRequest<OutBody>) {
        let idle = self.idle.clone();
        let cap = self.per_host;
        tokio::spawn(async move {
            if tx.ready().await.is_err() {
                return;
            }
            if let Ok(mut map) = idle.lock() {
                let list = map.entry(key).or_default();
                if list.len() < cap {
                    list.push(Idle {
                        tx,
                        since: Instant::now(),
                    });
                }
            }
        });
    }

    fn key_for(route: &Route, target: &Target) -> Key {
        match route {
            Route::Upstream(m)
                if matches!(
                    m.spec().scheme,
                    crate::upstream::Scheme::Http | crate::upstream::Scheme::Https
                ) =>
            {
                Key {
                    upstream: m.name().to_string(),
                    target: None,
                }
            }
            r => Key {
                upstream: r.name().to_string(),
                target: Some(target.to_string()),
            },
        }
    }

    /// Forwards `req` (already stripped of hop-by-hop headers) to `target`.
    pub async fn forward(
        &self,
        router: &Router,
        target: &Target,
        req: Request<Incoming>,
    ) -> Result<(Response<Incoming>, Route), ForwardError> {
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if self.via {
            parts
                .headers
                .append(header::VIA, HeaderValue::from_static("1.1 proxyguard"));
        }
        let empty = body.is_end_stream();
        let retry_safe = empty && idempotent(&parts.method);
        let mut body = Some(if empty {
            Either::Right(Empty::new())
        } else {
            Either::Left(body)
        });
        // Idle connections to upstreams that are out of service are closed.
        for m in router.pool.members().iter() {
            if !m.health.eligible() {
                self.evict_upstream(m.name());
            }
        }
        let mut tries = 0;
        // Upstream proxies that answered this request with 502/504.
        let mut gateway_failed: Vec<Arc<crate::pool::Member>> = Vec::new();
        loop {
            tries += 1;
            // Reuse an idle connection on a route the plan allows (most
            // preferred first); only a miss on all of them opens a new one.
            let plan = router.plain_plan(target).excluding(&gateway_failed);
            let routes = plan.routes();
            let reused = routes.iter().cloned().find_map(|route| {
                let key = Self::key_for(&route, target);
                self.checkout(&key).map(|tx| (tx, key, route))
            });
            let (mut tx, key, route, absolute, auth, was_reused) = match reused {
                Some((tx, key, route)) => {
                    let auth = match &route {
                        Route::Upstream(m) => m
                            .spec()
                            .credentials
                            .as_ref()
                            .map(crate::upstream::http_connect::basic_auth),
                        _ => None,
                    };
                    let absolute = key.target.is_none();
                    (tx, key, route, absolute, auth, true)
                }
                None => {
                    let (hc, route) = router.http_conn(plan, target).await?;
                    let key = Self::key_for(&route, target);
                    let (tx, conn) = hyper::client::conn::http1::Builder::new()
                        .handshake::<_, OutBody>(TokioIo::new(hc.conn))
                        .await
                        .map_err(|e| ForwardError::Upstream(e.to_string()))?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    (
                        tx,
                        key,
                        route,
                        hc.absolute_form,
                        hc.proxy_authorization,
                        false,
                    )
                }
            };
            let b = body.take().unwrap_or_else(|| Either::Right(Empty::new()));
            let req = build(&parts, target, absolute, auth.as_deref(), b);
            match tx.send_request(req).await {
                Ok(resp) => {
                    // A 407 from our upstream proxy is its own auth failure,
                    // never meant for our client: count it and try another.
                    if absolute && resp.status() == http::StatusCode::PROXY_AUTHENTICATION_REQUIRED
                    {
                        let scheme = resp
                            .headers()
                            .get(header::PROXY_AUTHENTICATE)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.split_whitespace().next())
                            .unwrap_or("unknown")
                            .to_string();
                        let err = if auth.is_some() {
                            ConnectError::ProxyAuthRejected { scheme }
                        } else {
                            ConnectError::ProxyAuthRequired { scheme }
                        };
                        if let Route::Upstream(m) = &route {
                            router.pool.report_failure(m, &err);
                        }
                        if retry_safe && tries < 3 {
                            continue;
                        }
                        return Err(ForwardError::Connect(err));
                    }
                    // 502/504 from an upstream proxy usually means its own
                    // path to the origin failed: a safe request goes to
                    // another upstream (Envoy's "gateway-error" retry).
                    if let Route::Upstream(m) = &route {
                        let gateway_error = matches!(resp.status().as_u16(), 502 | 504);
                        if gateway_error && absolute && retry_safe && tries < 3 {
                            gateway_failed.push(m.clone());
                            let untried = routes.iter().any(|r| match r {
                                Route::Upstream(x) => {
                                    !gateway_failed.iter().any(|t| Arc::ptr_eq(t, x))
                                }
                                _ => false,
                            });
                            if untried {
                                tracing::debug!(
                                    upstream = m.name(),
                                    status = resp.status().as_u16(),
                                    "gateway error from upstream proxy; retrying on another"
                                );
                                metrics::counter!("proxyguard_retries_total").increment(1);
                                continue;
                            }
                        }
                        if !gateway_error {
                            // Another upstream served what these could not:
                            // that is their fault, not the origin's.
                            for f in gateway_failed.iter().filter(|f| !Arc::ptr_eq(f, m)) {
                                router.pool.report_failure(
                                    f,
                                    &ConnectError::ProxyStatus {
                                        status: 502,
                                        reason: "gateway error another upstream did not have"
                                            .into(),
                                    },
                                );
                            }
                        }
                    }
                    self.checkin_later(key, tx);
                    return Ok((resp, route));
                }
                Err(e) => {
                    // A reused connection closed by the server is a benign race;
                    // a fresh one failing counts against the upstream.
                    if let (Route::Upstream(m), false) = (&route, was_reused) {
                        router.pool.report_failure(
                            m,
                            &ConnectError::Reset {
                                phase: crate::upstream::Phase::FirstByte,
                                proxy: true,
                            },
                        );
                    }
                    if retry_safe && tries < 3 {
                        tracing::debug!(error = %e, "request failed before an answer; retrying (idempotent, no body)");
                        continue;
                    }
                    return Err(ForwardError::Upstream(e.to_string()));
                }
            }
        }
    }
}

fn build(
    parts: &http::request::Parts,
    target: &Target,
    absolute: bool,
    proxy_auth: Option<&str>,
    body: OutBody,
) -> Request<OutBody> {
    let uri = if absolute {
        parts.uri.clone()
    } else {
        parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/")
            .parse::<Uri>()
            .unwrap_or_else(|_| Uri::from_static("/"))
    };
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_11;
    *req.headers_mut() = parts.headers.clone();
    // RFC 9112 §3.2.2: a proxy replaces Host with the target URI's host.
    let host = match parts.uri.authority() {
        Some(a) => a.as_str().rsplit('@').next().unwrap_or("").to_string(),
        None if target.port == 80 => target.host.to_string(),
        None => target.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&host) {
        req.headers_mut().insert(header::HOST, v);
    }
    if let Some(a) = proxy_auth {
        if let Ok(v) = HeaderValue::from_str(a) {
            req.headers_mut().insert(header::PROXY_AUTHORIZATION, v);
        }
    }
    req
}
