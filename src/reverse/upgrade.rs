//! `Upgrade` (WebSocket) through a route: the request goes to a backend
//! over HTTP/1.1 with its `Connection: upgrade` and `Upgrade` headers kept;
//! on `101 Switching Protocols` both sockets are handed over and relayed
//! (the same relay and idle timeout as CONNECT tunnels).

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::answer::text;
use super::attempt::Dial;
use super::backend::AttemptError;
use super::{full_body, RespBody, ReverseRoute};
use crate::pool::Member;

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
        let client_side = hyper::upgrade::on(&mut req);
        let (mut parts, _body) = req.into_parts();
        let client_host = parts.headers.get(header::HOST).cloned();
        crate::forward::strip_hop_by_hop(&mut parts.headers);
        self.forwarded_headers(&mut parts.headers, peer, tls);
        put_upgrade(&mut parts.headers, &proto);
        let (resp, m) = match self.send_upgrade(&parts, client_host.as_ref()).await {
            Ok(x) => x,
            Err(why) => {
                tracing::warn!(target: "access", kind = "reverse", client = %peer, error = %why, "no backend could serve the upgrade");
                return text(
                    StatusCode::BAD_GATEWAY,
                    &format!("proxyguard: 502 Bad Gateway: {why}"),
                );
            }
        };
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
        Response::from_parts(rp, full_body(Default::default()))
    }

    /// Sends the upgrade request to backends in zone order, each on a new
    /// connection through the attempt engine, until one answers.
    async fn send_upgrade(
        &self,
        parts: &http::request::Parts,
        client_host: Option<&HeaderValue>,
    ) -> Result<(Response<Incoming>, Arc<Member>), String> {
        let plan = self.plan();
        let timeout = self.cfg.timeout.0;
        let mut last_err = None;
        loop {
            let next = self.connect_next(&plan, timeout, Dial::Upgrade, &mut last_err);
            let Some(c) = next.await else {
                return Err(last_err.unwrap_or_else(|| "no backend available".into()));
            };
            let empty = full_body(Default::default());
            let r = self.backend_request(&c.m, parts, client_host, empty, false);
            let mut tx = c.tx;
            let failed = match tokio::time::timeout(timeout, tx.send(r)).await {
                Ok(Ok(resp)) => return Ok((resp, c.m)),
                Ok(Err(e)) => AttemptError::Sent(e),
                Err(_) => AttemptError::TimedOut(timeout),
            };
            last_err = Some(self.failed(&c.m, &failed));
        }
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
            let stats = crate::relay::relay(
                TokioIo::new(c),
                TokioIo::new(b),
                crate::relay::Watch::idle(idle),
                shutdown.expired(),
            )
            .await;
            tracing::info!(target: "access", kind = "reverse_upgrade", client = %peer, backend = %name, up = stats.up, down = stats.down, end = stats.end.as_str(), "tunnel closed");
        });
    }
}
