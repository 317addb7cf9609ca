//! The HTTP listener: CONNECT tunnels and absolute-form forwarding.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
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

use super::tunnel::Tunnel;
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

/// One request's access-log line: who asked, how, for what, since when.
/// A request dropped before its line was written (the client closed or
/// reset while it waited) still gets one, with `outcome="client_closed"`.
pub(super) struct Access {
    pub peer: SocketAddr,
    pub method: Method,
    /// The target as the line names it (redacted when written).
    pub target: String,
    pub started: Instant,
    /// The line is written (or a tunnel writes its own).
    written: AtomicBool,
}

impl Access {
    pub fn new(peer: SocketAddr, method: Method) -> Self {
        Access {
            peer,
            method,
            target: "-".into(),
            started: Instant::now(),
            written: AtomicBool::new(false),
        }
    }

    /// A tunnel took the request over and writes its own line.
    pub fn handed_to_tunnel(&self) {
        self.written.store(true, Ordering::Relaxed);
    }

    /// Counts the request and writes its line.
    pub fn log(&self, upstream: &str, status: u16, outcome: &str) {
        self.written.store(true, Ordering::Relaxed);
        let method = &self.method;
        metrics::counter!(
            "proxyguard_requests_total",
            "kind" => if *method == Method::CONNECT { "connect" } else { "http" },
            "outcome" => outcome.to_string()
        )
        .increment(1);
        let target = redact(&self.target);
        tracing::info!(
            target: "access",
            kind = "http",
            client = %self.peer,
            method = %method,
            target,
            upstream,
            status,
            duration_ms = self.started.elapsed().as_millis() as u64,
            outcome,
            "request"
        );
    }

    /// Logs the refusal and answers `msg` as plain text.
    fn reject(&self, status: StatusCode, outcome: &str, msg: &str) -> Response<RespBody> {
        self.log("-", status.as_u16(), outcome);
        text(status, msg)
    }
}

impl Drop for Access {
    fn drop(&mut self) {
        if !*self.written.get_mut() {
            // 499: nginx's code for a client that closed before the answer.
            self.log("-", 499, "client_closed");
        }
    }
}

/// 403 with `Proxy-Status: proxyguard; error=destination_ip_prohibited`.
fn prohibited(d: &Denied) -> Response<RespBody> {
    error_response(&ConnectError::Prohibited(d.clone()), None)
}

/// A destination the listener's ACL admitted, and the scope its
/// connections run in.
pub(super) struct Admitted {
    pub target: Target,
    pub scope: Scope,
}

/// Normalises the target's host and checks it against the listener's ACL.
fn acl_check(ctx: &ConnCtx, target: Target, tunnel: bool) -> Result<Admitted, (Target, Denied)> {
    let target = Target::new(acl::normalize(&target.host), target.port);
    match ctx.acl.check_target(&target, tunnel) {
        Ok(verdict) => Ok(Admitted {
            target,
            scope: Scope {
                acl: ctx.acl.clone(),
                verdict,
            },
        }),
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
    let mut log = Access::new(ctx.peer, req.method().clone());
    // hyper's buffer limit is soft when a whole head arrives in one read;
    // enforce the configured limit on the parsed head as well.
    let head_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + req.uri().to_string().len();
    if head_bytes > state.max_header_bytes {
        return Ok(log.reject(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "header_too_large",
            &format!(
                "proxyguard: request head of {head_bytes} bytes exceeds limits.max_header_bytes ({})",
                state.max_header_bytes
            ),
        ));
    }
    log.target = req.uri().to_string();
    if let Some(r) = admit_credentials(&req, &ctx, &state) {
        let outcome = match r.status() {
            StatusCode::TOO_MANY_REQUESTS => "auth_banned",
            _ => "auth_required",
        };
        log.log("-", r.status().as_u16(), outcome);
        return Ok(r);
    }
    if req.method() != Method::CONNECT {
        // Boxed too: hyper allocates and moves the service future with
        // every connection and request, so it must stay small; the
        // forwarding future is several KiB.
        return Ok(Box::pin(forward_plain(req, ctx, state, log)).await);
    }
    let dest = match connect_target(&req, &ctx, &mut log) {
        Ok(x) => x,
        Err(refused) => return Ok(*refused),
    };
    // Boxed: hyper keeps (and moves) the service future with every
    // connection, and the tunnel's future is large.
    let upgrade = hyper::upgrade::on(&mut req);
    Ok(Box::pin(connect(upgrade, dest, ctx, state, log)).await)
}

/// A CONNECT's `host:port`, normalised and admitted by the ACL (`log`
/// then names it); else the refusal, logged.
fn connect_target(
    req: &Request<Incoming>,
    ctx: &ConnCtx,
    log: &mut Access,
) -> Result<Admitted, Box<Response<RespBody>>> {
    let Some(target) = req
        .uri()
        .authority()
        .and_then(|a| Target::parse_authority(a.as_str(), None))
    else {
        return Err(Box::new(log.reject(
            StatusCode::BAD_REQUEST,
            "bad_target",
            "proxyguard: CONNECT needs host:port",
        )));
    };
    match acl_check(ctx, target, true) {
        Ok(dest) => {
            log.target = dest.target.to_string();
            Ok(dest)
        }
        Err((target, d)) => {
            log.target = target.to_string();
            log.log("-", 403, "destination_ip_prohibited");
            Err(Box::new(prohibited(&d)))
        }
    }
}

/// The target of an absolute-form `http://` request; else the refusal, logged.
fn plain_target(uri: &http::Uri, log: &Access) -> Result<Target, Box<Response<RespBody>>> {
    let target = match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(a)) => Target::parse_authority(a.as_str(), Some(80)),
        (Some(s), _) => {
            return Err(Box::new(log.reject(
                StatusCode::BAD_REQUEST,
                "bad_scheme",
                &format!(
                    "proxyguard: cannot forward {s}:// in absolute-form; use CONNECT for https"
                ),
            )));
        }
        _ => {
            return Err(Box::new(log.reject(
                StatusCode::BAD_REQUEST,
                "not_proxy_request",
                "proxyguard: this is a forward proxy; send absolute-form requests (http://host/path) or CONNECT",
            )));
        }
    };
    target.ok_or_else(|| {
        Box::new(log.reject(
            StatusCode::BAD_REQUEST,
            "bad_target",
            "proxyguard: bad host in URL",
        ))
    })
}

/// An absolute-form request: checked, then forwarded.
async fn forward_plain(
    req: Request<Incoming>,
    ctx: Arc<ConnCtx>,
    state: Arc<Gateway>,
    log: Access,
) -> Response<RespBody> {
    let target = match plain_target(req.uri(), &log) {
        Ok(t) => t,
        Err(refused) => return *refused,
    };
    let dest = match acl_check(&ctx, target, false) {
        Ok(x) => x,
        Err((_, d)) => {
            log.log("-", 403, "destination_ip_prohibited");
            return prohibited(&d);
        }
    };
    if crate::forward::wants_upgrade(req.headers()) {
        // Boxed like CONNECT: only upgrades pay for the larger future.
        return Box::pin(super::upgrade::forward(req, dest, ctx, state, log)).await;
    }
    let Admitted { target, scope } = dest;
    let forwarded = acl::scoped(scope, state.forwarder.forward(&state.router, &target, req)).await;
    match forwarded {
        Ok((resp, route)) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            log.log(route.name(), parts.status.as_u16(), "ok");
            Response::from_parts(parts, Either::Left(body))
        }
        Err(e) => forward_error(e, &log),
    }
}

/// The response for a failed forward, with its access-log line.
pub(super) fn forward_error(err: ForwardError, log: &Access) -> Response<RespBody> {
    match err {
        ForwardError::Connect(e) => {
            log.log("-", e.http_status(), e.proxy_status_error());
            error_response(&e, None)
        }
        ForwardError::Client(msg) => {
            // The client's own body broke: its fault, nobody else's.
            log.log("-", 400, "client_error");
            let mut r = text(
                StatusCode::BAD_REQUEST,
                &format!("proxyguard: 400 Bad Request: {msg}"),
            );
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        }
        ForwardError::Timeout { upstream, after } => {
            log.log(&upstream, 504, "http_response_timeout");
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
            log.log("-", 502, "upstream_error");
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

async fn connect(
    upgrade: hyper::upgrade::OnUpgrade,
    Admitted { target, scope }: Admitted,
    ctx: Arc<ConnCtx>,
    state: Arc<Gateway>,
    log: Access,
) -> Response<RespBody> {
    let (mut conn, route) = match acl::scoped(scope, state.router.tunnel(&target)).await {
        Ok(x) => x,
        Err(e) => {
            log.log("-", e.http_status(), e.proxy_status_error());
            return error_response(&e, None);
        }
    };
    let st = state.clone();
    super::tunnel::spawn(ctx, &state, upgrade, move |upgraded| async move {
        log.handed_to_tunnel();
        let tunnel = Tunnel {
            kind: "connect",
            peer: log.peer,
            target: &target,
            route: &route,
            started: log.started,
        };
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let mut client = parts.io.into_inner();
                // hyper's leftover bytes may share its whole read buffer:
                // forward them and let go, so an idle tunnel does not pin it.
                let early = parts.read_buf;
                if !early.is_empty() && conn.write_all(&early).await.is_err() {
                    return;
                }
                drop(early);
                tunnel
                    .run(&st, |watch, cancel| {
                        crate::relay::relay_conn(&mut client, conn, watch, cancel)
                    })
                    .await
            }
            Err(upgraded) => {
                tunnel
                    .run(&st, |watch, cancel| {
                        crate::relay::relay(TokioIo::new(upgraded), conn, watch, cancel)
                    })
                    .await
            }
        }
    });
    Response::new(Either::Right(Full::new(Bytes::new())))
}
