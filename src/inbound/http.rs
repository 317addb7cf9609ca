//! The HTTP listener: CONNECT tunnels and absolute-form forwarding.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{ConnCtx, Gateway};
use crate::acl::{self, Denied, Scope};
use crate::config::redact::redact;
use crate::forward::{strip_hop_by_hop, ForwardError};
use crate::upstream::{ConnectError, Target};

pub type RespBody = Either<crate::forward::ForwardedBody, Full<Bytes>>;

/// Serves one client connection (keep-alive, many requests): plain TCP, or
/// the TLS stream of an `https` listener.
pub async fn serve<I>(stream: I, ctx: Arc<ConnCtx>, state: Arc<Gateway>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = ctx.peer;
    let io = TokioIo::new(stream);
    let st = state.clone();
    let svc = service_fn(move |req| handle(req, ctx.clone(), st.clone()));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(state.client_header_timeout)
        .max_buf_size(state.max_header_bytes.max(8192))
        .keep_alive(true)
        .serve_connection(io, svc)
        .with_upgrades();
    tokio::pin!(conn);
    let shutdown = state.shutdown.clone();
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(client = %peer, error = %e, "client connection ended with error");
            }
        }
        _ = shutdown.triggered() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// A short plain-text response.
pub fn text(status: StatusCode, msg: &str) -> Response<RespBody> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(format!("{msg}\n")))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn quote(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '\''
            } else {
                c
            }
        })
        .collect();
    format!("\"{cleaned}\"")
}

/// 502/504 with an RFC 9209 `Proxy-Status` header naming the error.
pub fn error_response(err: &ConnectError, upstream: Option<&str>) -> Response<RespBody> {
    let status = StatusCode::from_u16(err.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut r = text(
        status,
        &format!(
            "proxyguard: {} {}: {err}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        ),
    );
    let mut ps = format!(
        "proxyguard; error={}; details={}",
        err.proxy_status_error(),
        quote(&err.to_string())
    );
    if let Some(u) = upstream.or(err.next_hop()) {
        ps.push_str(&format!("; next-hop={}", quote(u)));
    }
    if let Ok(v) = HeaderValue::from_str(&ps) {
        r.headers_mut().insert("proxy-status", v);
    }
    r
}

pub(super) fn access(
    peer: SocketAddr,
    method: &Method,
    target: &str,
    upstream: &str,
    status: u16,
    started: Instant,
    outcome: &str,
) {
    metrics::counter!(
        "proxyguard_requests_total",
        "kind" => if *method == Method::CONNECT { "connect" } else { "http" },
        "outcome" => outcome.to_string()
    )
    .increment(1);
    let target = redact(target);
    tracing::info!(
        target: "access",
        kind = "http",
        client = %peer,
        method = %method,
        target,
        upstream,
        status,
        duration_ms = started.elapsed().as_millis() as u64,
        outcome,
        "request"
    );
}

/// 403 with `Proxy-Status: proxyguard; error=destination_ip_prohibited`.
fn prohibited(d: &Denied) -> Response<RespBody> {
    error_response(&ConnectError::Prohibited(d.clone()), None)
}

/// Normalises the target's host and checks it against the listener's ACL.
fn acl_check(
    ctx: &ConnCtx,
    target: Target,
    tunnel: bool,
) -> Result<(Target, Scope), (Target, Denied)> {
    let target = Target::new(acl::normalize(&target.host), target.port);
    match ctx.acl.check_target(&target, tunnel) {
        Ok(verdict) => Ok((
            target,
            Scope {
                acl: ctx.acl.clone(),
                verdict,
            },
        )),
        Err(d) => {
            acl::record(&d, ctx.peer, if tunnel { "connect" } else { "http" });
            Err((target, d))
        }
    }
}

/// 429 for a banned client, 407 for missing or wrong credentials (counting
/// failures towards a ban); None when the request may proceed.
fn admit_credentials(
    req: &Request<Incoming>,
    ctx: &ConnCtx,
    state: &Gateway,
) -> Option<Response<RespBody>> {
    if !state.admission.auth_required() {
        return None;
    }
    let ip = ctx.peer.ip();
    if state.bans.banned(ip) {
        metrics::counter!("proxyguard_auth_banned_requests_total", "kind" => "http").increment(1);
        let mut r = text(
            StatusCode::TOO_MANY_REQUESTS,
            "proxyguard: too many failed logins from this address; try again later",
        );
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Some(r);
    }
    let given = req.headers().get(header::PROXY_AUTHORIZATION);
    if state
        .admission
        .check_proxy_authorization(given.map(|v| v.as_bytes()))
    {
        state.bans.success(ip);
        return None;
    }
    if given.is_some() {
        metrics::counter!("proxyguard_auth_failures_total", "kind" => "http").increment(1);
        if let Some(len) = state.bans.failure(ip) {
            super::bans::announce(&state.router.pool.events, ip, len, "http");
        }
    }
    let mut r = text(
        StatusCode::PROXY_AUTHENTICATION_REQUIRED,
        "proxyguard: proxy authentication required",
    );
    r.headers_mut().insert(
        header::PROXY_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"proxyguard\""),
    );
    Some(r)
}

async fn handle(
    mut req: Request<Incoming>,
    ctx: Arc<ConnCtx>,
    state: Arc<Gateway>,
) -> Result<Response<RespBody>, Infallible> {
    ctx.slot.active();
    let peer = ctx.peer;
    let started = Instant::now();
    // hyper's buffer limit is soft when a whole head arrives in one read;
    // enforce the configured limit on the parsed head as well.
    let head_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.uri().to_string().len();
    if head_bytes > state.max_header_bytes {
        access(
            peer,
            req.method(),
            "-",
            "-",
            431,
            started,
            "header_too_large",
        );
        return Ok(text(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            &format!(
                "proxyguard: request head of {head_bytes} bytes exceeds limits.max_header_bytes ({})",
                state.max_header_bytes
            ),
        ));
    }
    if let Some(r) = admit_credentials(&req, &ctx, &state) {
        let (status, outcome) = match r.status() {
            StatusCode::TOO_MANY_REQUESTS => (429, "auth_banned"),
            _ => (407, "auth_required"),
        };
        access(
            peer,
            req.method(),
            &req.uri().to_string(),
            "-",
            status,
            started,
            outcome,
        );
        return Ok(r);
    }

    if req.method() == Method::CONNECT {
        let Some(target) = req
            .uri()
            .authority()
            .and_then(|a| Target::parse_authority(a.as_str(), None))
        else {
            access(
                peer,
                req.method(),
                &req.uri().to_string(),
                "-",
                400,
                started,
                "bad_target",
            );
            return Ok(text(
                StatusCode::BAD_REQUEST,
                "proxyguard: CONNECT needs host:port",
            ));
        };
        let (target, scope) = match acl_check(&ctx, target, true) {
            Ok(x) => x,
            Err((target, d)) => {
                access(
                    peer,
                    req.method(),
                    &target.to_string(),
                    "-",
                    403,
                    started,
                    "destination_ip_prohibited",
                );
                return Ok(prohibited(&d));
            }
        };
        // Boxed: hyper keeps (and moves) the service future with every
        // connection, and the tunnel's future is large; only CONNECTs pay
        // for the allocation.
        return Ok(Box::pin(connect(
            req_upgrade(&mut req),
            target,
            scope,
            ctx,
            state,
            started,
        ))
        .await);
    }
    Ok(forward_plain(req, ctx, state, started).await)
}

/// An absolute-form request: checked, then forwarded.
async fn forward_plain(
    req: Request<Incoming>,
    ctx: Arc<ConnCtx>,
    state: Arc<Gateway>,
    started: Instant,
) -> Response<RespBody> {
    let peer = ctx.peer;
    let uri = req.uri().clone();
    let target = match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(a)) => Target::parse_authority(a.as_str(), Some(80)),
        (Some(s), _) => {
            access(
                peer,
                req.method(),
                &uri.to_string(),
                "-",
                400,
                started,
                "bad_scheme",
            );
            return text(
                StatusCode::BAD_REQUEST,
                &format!(
                    "proxyguard: cannot forward {s}:// in absolute-form; use CONNECT for https"
                ),
            );
        }
        _ => {
            access(
                peer,
                req.method(),
                &uri.to_string(),
                "-",
                400,
                started,
                "not_proxy_request",
            );
            return text(
                StatusCode::BAD_REQUEST,
                "proxyguard: this is a forward proxy; send absolute-form requests (http://host/path) or CONNECT",
            );
        }
    };
    let Some(target) = target else {
        return text(StatusCode::BAD_REQUEST, "proxyguard: bad host in URL");
    };
    let (target, scope) = match acl_check(&ctx, target, false) {
        Ok(x) => x,
        Err((_, d)) => {
            access(
                peer,
                req.method(),
                &uri.to_string(),
                "-",
                403,
                started,
                "destination_ip_prohibited",
            );
            return prohibited(&d);
        }
    };
    if crate::forward::wants_upgrade(req.headers()) {
        // Boxed like CONNECT: only upgrades pay for the larger future.
        return Box::pin(super::upgrade::forward(
            req, target, scope, ctx, state, started,
        ))
        .await;
    }
    let method = req.method().clone();
    let forwarded = acl::scoped(scope, state.forwarder.forward(&state.router, &target, req)).await;
    match forwarded {
        Ok((resp, route)) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            access(
                peer,
                &method,
                &uri.to_string(),
                route.name(),
                parts.status.as_u16(),
                started,
                "ok",
            );
            Response::from_parts(parts, Either::Left(body))
        }
        Err(e) => forward_error(e, peer, &method, &uri.to_string(), started),
    }
}

/// The response for a failed forward, with its access-log line.
pub(super) fn forward_error(
    err: ForwardError,
    peer: SocketAddr,
    method: &Method,
    uri: &str,
    started: Instant,
) -> Response<RespBody> {
    match err {
        ForwardError::Connect(e) => {
            access(
                peer,
                method,
                uri,
                "-",
                e.http_status(),
                started,
                e.proxy_status_error(),
            );
            error_response(&e, None)
        }
        ForwardError::Client(msg) => {
            // The client's own body broke: its fault, nobody else's.
            access(peer, method, uri, "-", 400, started, "client_error");
            let mut r = text(
                StatusCode::BAD_REQUEST,
                &format!("proxyguard: 400 Bad Request: {msg}"),
            );
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        }
        ForwardError::Timeout { upstream, after } => {
            access(
                peer,
                method,
                uri,
                &upstream,
                504,
                started,
                "http_response_timeout",
            );
            let mut r = text(
                StatusCode::GATEWAY_TIMEOUT,
                &format!(
                    "proxyguard: 504 Gateway Timeout: no response head from {upstream} within {}ms",
                    after.as_millis()
                ),
            );
            if let Ok(v) = HeaderValue::from_str(&format!(
                "proxyguard; error=http_response_timeout; next-hop={}",
                quote(&upstream)
            )) {
                r.headers_mut().insert("proxy-status", v);
            }
            r
        }
        ForwardError::Upstream(msg) => {
            access(peer, method, uri, "-", 502, started, "upstream_error");
            let mut r = text(
                StatusCode::BAD_GATEWAY,
                &format!("proxyguard: 502 Bad Gateway: {msg}"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!(
                "proxyguard; error=http_response_incomplete; details={}",
                quote(&msg)
            )) {
                r.headers_mut().insert("proxy-status", v);
            }
            r
        }
    }
}

fn req_upgrade(req: &mut Request<Incoming>) -> hyper::upgrade::OnUpgrade {
    hyper::upgrade::on(req)
}

async fn connect(
    upgrade: hyper::upgrade::OnUpgrade,
    target: Target,
    scope: Scope,
    ctx: Arc<ConnCtx>,
    state: Arc<Gateway>,
    started: Instant,
) -> Response<RespBody> {
    let peer = ctx.peer;
    let (mut conn, route) = match acl::scoped(scope, state.router.tunnel(&target)).await {
        Ok(x) => x,
        Err(e) => {
            access(
                peer,
                &Method::CONNECT,
                &target.to_string(),
                "-",
                e.http_status(),
                started,
                e.proxy_status_error(),
            );
            return error_response(&e, None);
        }
    };
    let live = state.shutdown.live();
    tokio::spawn(async move {
        // The tunnel keeps the connection's slot for its whole life.
        let _slot = ctx.slot.clone();
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(client = %peer, error = %e, "CONNECT upgrade failed");
                return;
            }
        };
        let cancel = super::tunnel_cancel(&state, &route);
        let _active = super::GaugeGuard::new("proxyguard_tunnels_active");
        let stats = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let mut client = parts.io.into_inner();
                // hyper's leftover bytes may share its whole read buffer:
                // forward them and let go, so an idle tunnel does not pin it.
                let early = parts.read_buf;
                if !early.is_empty() && conn.write_all(&early).await.is_err() {
                    return;
                }
                drop(early);
                crate::relay::relay_conn(&mut client, conn, state.idle_timeout, cancel).await
            }
            Err(upgraded) => {
                crate::relay::relay(TokioIo::new(upgraded), conn, state.idle_timeout, cancel).await
            }
        };
        super::log_tunnel("connect", peer, &target, &route, started, &stats);
        drop(live);
    });
    Response::new(Either::Right(Full::new(Bytes::new())))
}
