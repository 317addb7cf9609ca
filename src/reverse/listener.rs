//! The route's listener: accepts, admits, and serves HTTP/1.1 and HTTP/2
//! (h2c prior knowledge) on the same plaintext port, with upgrades.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

use super::ReverseRoute;
use crate::route::Router;
use crate::shutdown::Shutdown;

fn builder(header_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    b.http2().timer(TokioTimer::new());
    b
}

/// Binds and serves every configured route.
pub async fn start(
    cfg: &crate::config::Config,
    router: Arc<Router>,
    shutdown: Shutdown,
) -> Result<Vec<(SocketAddr, Arc<ReverseRoute>)>, crate::server::ServeError> {
    let mut out = Vec::new();
    for rc in &cfg.file.route {
        let addr: SocketAddr = rc.listen.get_ref().trim().parse().map_err(|_| {
            crate::server::ServeError::Route(format!("bad listen {}", rc.listen.get_ref()))
        })?;
        let route = Arc::new(
            ReverseRoute::new(rc, cfg, router.clone(), shutdown.clone())
                .map_err(|e| crate::server::ServeError::Route(e.to_string()))?,
        );
        let listener = crate::inbound::bind(addr)
            .await
            .map_err(|source| crate::server::ServeError::Bind { addr, source })?;
        let local = listener.local_addr().unwrap_or(addr);
        tracing::info!(addr = %local, backends = rc.backend.len(), local_zone = rc.local_zone.as_deref().unwrap_or("-"), via = %rc.via, "reverse route");
        route.spawn_checks(cfg.file.health.clone(), shutdown.clone());
        let r2 = route.clone();
        let sd = shutdown.clone();
        let conn = Arc::new(builder(cfg.client_header_timeout));
        let keepalive = cfg.timeouts.tcp_keepalive;
        tokio::spawn(async move {
            loop {
                let Some(permit) = r2.admission.slot().await else {
                    return;
                };
                let (stream, peer) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; } },
                    _ = sd.triggered() => return,
                };
                if !r2.admission.peer_allowed(peer.ip()) {
                    continue;
                }
                let _ = stream.set_nodelay(true);
                crate::tcp_keepalive::apply(keepalive, &stream);
                let r3 = r2.clone();
                let live = sd.live();
                let conn = conn.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let r4 = r3.clone();
                        async move { Ok::<_, Infallible>(r4.handle(req, peer).await) }
                    });
                    let _ = conn
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                    drop(live);
                    drop(permit);
                });
            }
        });
        out.push((local, route));
    }
    Ok(out)
}
