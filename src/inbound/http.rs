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

use super::State;
use crate::forward::{strip_hop_by_hop, ForwardError};
use crate::upstream::{ConnectError, Target};

pub type RespBody = Either<crate::forward::ForwardedBody, Full<Bytes>>;

/// Serves one client connection (keep-alive, many requests).
pub async fn serve(stream: TcpStream, peer: SocketAddr, state: Arc<State>) {
    let io = TokioIo::new(stream);
    let st = state.clone();
    let svc = service_fn(move |req| handle(req, peer, st.clone()));
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

fn access(
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

async fn handle(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    state: Arc<State>,
) -> Result<Response<RespBody>, Infallible> {
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
    if !state.admission.check_proxy_authorization(
        req.headers()
            .get(header::PROXY_AUTHORIZATION)
            .map(|v| v.as_bytes()),
    ) {
        let mut r = text(
            StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            "proxyguard: proxy authentication required",
        );
        r.headers_mut().insert(
            header::PROXY_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"proxyguard\""),
        );
        access(
            peer,
            req.method(),
            &req.uri().to_string(),
            "-",
            407,
            started,
            "auth_required",
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
        return Ok(connect(req_upgrade(&mut req), target, peer, state, started).await);
    }

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
            return Ok(text(
                StatusCode::BAD_REQUEST,
                &format!(
                    "proxyguard: cannot forward {s}:// in absolute-form; use CONNECT for https"
                ),
            ));
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
            return Ok(text(
                StatusCode::BAD_REQUEST,
                "proxyguard: this is a forward proxy; send absolute-form requests (http://host/path) or CONNECT",
            ));
        }
    };
    let Some(target) = target else {
        return Ok(text(StatusCode::BAD_REQUEST, "proxyguard: bad host in URL"));
    };
    let method = req.method().clone();
    match state.forwarder.forward(&state.router, &target, req).await {
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
            Ok(Response::from_parts(parts, Either::Left(body)))
        }
        Err(ForwardError::Connect(e)) => {
            access(
                peer,
                &method,
                &uri.to_string(),
                "-",
                e.http_status(),
                started,
                e.proxy_status_error(),
            );
            Ok(error_response(&e, None))
        }
        Err(ForwardError::Client(msg)) => {
            // The client's own body broke: its fault, nobody else's.
            access(
                peer,
                &method,
                &uri.to_string(),
                "-",
                400,
                started,
                "client_error",
            );
            let mut r = text(
                StatusCode::BAD_REQUEST,
                &format!("proxyguard: 400 Bad Request: {msg}"),
            );
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            Ok(r)
        }
        Err(ForwardError::Timeout { upstream, after }) => {
            access(
                peer,
                &method,
                &uri.to_string(),
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
            Ok(r)
        }
        Err(ForwardError::Upstream(msg)) => {
            access(
                peer,
                &method,
                &uri.to_string(),
                "-",
                502,
                started,
                "upstream_error",
            );
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
            Ok(r)
        }
    }
}

fn req_upgrade(req: &mut Request<Incoming>) -> hyper::upgrade::OnUpgrade {
    hyper::upgrade::on(req)
}

async fn connect(
    upgrade: hyper::upgrade::OnUpgrade,
    target: Target,
    peer: SocketAddr,
    state: Arc<State>,
    started: Instant,
) -> Response<RespBody> {
    let (mut conn, route) = match state.router.tunnel(&target).await {
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
