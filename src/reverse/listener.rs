//! The route's listener: accepts, admits, and serves HTTP/1.1 and HTTP/2
//! on the same port (h2c prior knowledge when plaintext; with `cert`/`key`
//! TLS, ALPN `h2` or `http/1.1`), with upgrades.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

use super::ReverseRoute;
use crate::config::route_protocols::{tls_files, ALPN_H2_HTTP11};
use crate::inbound::limits::{Limits, Slot};
use crate::route::Router;
use crate::shutdown::Shutdown;
use crate::tls_acceptor::ServerTls;

/// Serves one accepted (and, with TLS, handshaken) connection.
async fn serve<I>(
    conn: &auto::Builder<TokioExecutor>,
    io: I,
    route: Arc<ReverseRoute>,
    peer: SocketAddr,
    tls: bool,
    slot: &Arc<Slot>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let slot = slot.clone();
    let seen = std::sync::atomic::AtomicBool::new(false);
    let svc = service_fn(move |req| {
        // The first request makes the connection no longer sheddable.
        if !seen.swap(true, std::sync::atomic::Ordering::Relaxed) {
            slot.active();
        }
        let r = route.clone();
        async move { Ok::<_, Infallible>(r.handle(req, peer, tls).await) }
    });
    let _ = conn
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .await;
}

fn builder(header_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    b.http2().timer(TokioTimer::new());
    b
}

/// Binds and serves every configured route. Its connections take their
/// slots from `limits`, the same global and per-client limits as the
/// forward listeners: `max_connections` is one number for the process.
pub async fn start(
    cfg: &crate::config::Config,
    router: Arc<Router>,
    shutdown: Shutdown,
    limits: Arc<Limits>,
) -> Result<Vec<(SocketAddr, Arc<ReverseRoute>)>, crate::server::ServeError> {
    let mut out = Vec::new();
    for rc in &cfg.routes {
        let addr: SocketAddr = rc.listen.get_ref().trim().parse().map_err(|_| {
            crate::server::ServeError::Route(format!("bad listen {}", rc.listen.get_ref()))
        })?;
        let mut route = ReverseRoute::new(rc, cfg, router.clone(), shutdown.clone())
            .map_err(|e| crate::server::ServeError::Route(e.to_string()))?;
        if let Some(files) = tls_files(rc, cfg.path.as_deref()) {
            route.server_tls = Some(
                ServerTls::load(files, ALPN_H2_HTTP11)
                    .map_err(|e| crate::server::ServeError::Route(format!("route {addr}: {e}")))?,
            );
        }
        let route = Arc::new(route);
        let listener = crate::inbound::bind(addr)
            .await
            .map_err(|source| crate::server::ServeError::Bind { addr, source })?;
        let local = listener.local_addr().unwrap_or(addr);
        tracing::info!(addr = %local, tls = route.server_tls.is_some(), backends = rc.backend.len(), local_zone = rc.local_zone.as_deref().unwrap_or("-"), via = %rc.via, "reverse route");
        route.spawn_checks(cfg.health.clone(), shutdown.clone());
        let r2 = route.clone();
        let sd = shutdown.clone();
        let header_timeout = cfg.client_header_timeout;
        let conn = Arc::new(builder(header_timeout));
        let keepalive = cfg.timeouts.tcp_keepalive;
        let limits = limits.clone();
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; } },
                    _ = sd.triggered() => return,
                };
                if !r2.admission.peer_allowed(peer.ip()) {
                    continue;
                }
                let slot = tokio::select! {
                    s = limits.admit(peer.ip()) => match s {
                        Ok(s) => Arc::new(s),
                        Err(e) => {
                            metrics::counter!("proxyguard_connections_refused_total", "reason" => "per_client").increment(1);
                            tracing::warn!(client = %peer, error = %e, "route connection refused");
                            continue;
                        }
                    },
                    _ = sd.triggered() => return,
                };
                let _ = stream.set_nodelay(true);
                crate::tcp_keepalive::apply(keepalive, &stream);
                let r3 = r2.clone();
                let live = sd.live();
                let conn = conn.clone();
                tokio::spawn(async move {
                    let serving = async {
                        match r3.server_tls.clone() {
                            None => serve(&conn, stream, r3, peer, false, &slot).await,
                            Some(t) => match t.accept(stream, header_timeout).await {
                                Ok(s) => serve(&conn, s, r3, peer, true, &slot).await,
                                Err(e) => {
                                    tracing::debug!(client = %peer, reason = e.reason(), error = %e, "route TLS handshake failed")
                                }
                            },
                        }
                    };
                    // Like the forward listeners: a connection that has not
                    // sent a request yet gives way when the limit is reached.
                    tokio::select! {
                        _ = serving => {}
                        _ = slot.shed() => {
                            tracing::debug!(client = %peer, "shed: no request yet and the connection limit is reached");
                        }
                    }
                    drop(live);
                });
            }
        });
        out.push((local, route));
    }
    Ok(out)
}
