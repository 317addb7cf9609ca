//! `Upgrade` (WebSocket) through a route: the request goes to a backend
//! over HTTP/1.1 with its `Connection: upgrade` and `Upgrade` headers kept;
//! on `101 Switching Protocols` both sockets are handed over and relayed
//! (the same relay and idle timeout as CONNECT tunnels).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::answer::text;
use super::{as_backend_fault, full_body, RespBody, ReverseRoute};
use crate::pool::Outcome;

/// The protocol an HTTP/1.1 request asks to switch to, if it does.
pub fn requested(req: &Request<Incoming>) -> Option<HeaderValue> {
    if req.version() != http::Version::HTTP_11 {
        return None;
    }
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !asks {
        return None;
    }
    req.headers().get(header::UPGRADE).cloned()
}

fn put_upgrade(h: &mut HeaderMap, proto: &HeaderValue) {
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, proto.clone());
}

impl ReverseRoute {
    /// Forwards an upgrade request; relays both ways after a 101.
    pub(super) async fn handle_upgrade(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        proto: HeaderValue,
        peer: SocketAddr,
        tls: bool,
    ) -> Response<RespBody> {
        let started = Instant::now();
        let client_side = hyper::upgrade::on(&mut req);
        let (mut parts, _body) = req.into_parts();
        let client_host = parts.headers.get(header::HOST).cloned();
        crate::forward::strip_hop_by_hop(&mut parts.headers);
        self.forwarded_headers(&mut parts.headers, peer, tls);
        put_upgrade(&mut parts.headers, &proto);
        let mut last_err = None;
        for m in self.order().iter().take(self.cfg.max_attempts as usize) {
            let mut tx = match self.upgrade_sender(m).await {
                Ok(tx) => tx,
                Err(e) => {
                    self.pool
                        .report(m, Outcome::of_error(as_backend_fault(e.clone())));
                    last_err = Some(format!("{}: {e}", m.name()));
                    continue;
                }
            };
            let r = self.backend_request(
                m,
                &parts,
                client_host.as_ref(),
                full_body(Default::default()),
                false,
            );
            let resp = match tokio::time::timeout(self.cfg.timeout.0, tx.send(r)).await {
                Ok(Ok(resp)) => resp,
                Ok(Err(e)) => {
                    last_err = Some(format!("{}: {e}", m.name()));
                    continue;
                }
                Err(_) => {
                    last_err = Some(format!(
                        "{}: no answer in {:?}",
                        m.name(),
                        self.cfg.timeout.0
                    ));
                    continue;
                }
            };
            self.pool.report(m, Outcome::Served(started.elapsed()));
            let status = resp.status();
            tracing::info!(target: "access", kind = "reverse", client = %peer, method = %parts.method, path = %parts.uri, backend = m.name(), status = status.as_u16(), upgrade = ?proto, "request");
            if status != StatusCode::SWITCHING_PROTOCOLS {
                let (mut rp, rb) = resp.into_parts();
                crate::forward::strip_hop_by_hop(&mut rp.headers);
                return Response::from_parts(rp, super::incoming_body(rb));
            }
            let mut resp = resp;
            let backend_side = hyper::upgrade::on(&mut resp);
            let (mut rp, _) = resp.into_parts();
            rp.extensions = Default::default();
            let accepted = rp
                .headers
                .get(header::UPGRADE)
                .cloned()
                .unwrap_or(proto.clone());
            crate::forward::strip_hop_by_hop(&mut rp.headers);
            put_upgrade(&mut rp.headers, &accepted);
            self.spawn_relay(client_side, backend_side, peer, m.name().to_string());
            return Response::from_parts(rp, full_body(Default::default()));
        }
        let why = last_err.unwrap_or_else(|| "no backend available".into());
        tracing::warn!(target: "access", kind = "reverse", client = %peer, error = %why, "no backend could serve the upgrade");
        text(
            StatusCode::BAD_GATEWAY,
            &format!("proxyguard: 502 Bad Gateway: {why}"),
        )
    }

    fn spawn_relay(
        &self,
        client: hyper::upgrade::OnUpgrade,
        backend: hyper::upgrade::OnUpgrade,
        peer: SocketAddr,
        name: String,
    ) {
        let idle = self.idle_timeout;
        let shutdown = self.shutdown.clone();
        let live = shutdown.live();
        tokio::spawn(async move {
            let _live = live;
            let (c, b) = match tokio::try_join!(client, backend) {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade did not complete");
                    return;
                }
            };
            let stats =
                crate::relay::relay(TokioIo::new(c), TokioIo::new(b), idle, shutdown.expired())
                    .await;
            tracing::info!(target: "access", kind = "reverse_upgrade", client = %peer, backend = %name, up = stats.up, down = stats.down, end = stats.end.as_str(), "tunnel closed");
        });
    }
}
