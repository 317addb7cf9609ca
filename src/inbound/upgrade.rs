//! The client side of an upgrade through forwarding: the request goes to
//! the upstream once ([`Forwarder::upgrade`](crate::forward::Forwarder)),
//! and after `101 Switching Protocols` the client's connection and the
//! upstream's are relayed as a tunnel — the same relay, idle timeout,
//! connection slot, drain and accounting as a CONNECT tunnel (logged and
//! counted as tunnel kind `upgrade`). Any other answer is passed through.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::http::{access, forward_error, RespBody};
use super::{ConnCtx, Gateway};
use crate::acl::{self, Scope};
use crate::forward::{strip_hop_by_hop, Upgrade};
use crate::upstream::Target;

pub(super) async fn forward(
    mut req: Request<Incoming>,
    target: Target,
    scope: Scope,
    ctx: Arc<ConnCtx>,
    state: Arc<Gateway>,
    started: Instant,
) -> Response<RespBody> {
    let peer = ctx.peer;
    let client_side = hyper::upgrade::on(&mut req);
    let method = req.method().clone();
    let uri = req.uri().to_string();
    let answer = acl::scoped(scope, state.forwarder.upgrade(&state.router, &target, req)).await;
    let (head, upstream, route) = match answer {
        Err(e) => return forward_error(e, peer, &method, &uri, started),
        Ok(Upgrade::Answered { resp, route }) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            let status = parts.status.as_u16();
            access(peer, &method, &uri, route.name(), status, started, "ok");
            return Response::from_parts(parts, Either::Left(body));
        }
        Ok(Upgrade::Switched {
            head,
            upstream,
            route,
        }) => (head, upstream, route),
    };
    access(peer, &method, &uri, route.name(), 101, started, "ok");
    let live = state.shutdown.live();
    tokio::spawn(async move {
        // The tunnel keeps the connection's slot for its whole life.
        let _slot = ctx.slot.clone();
        let (client, upstream) = match tokio::try_join!(client_side, upstream) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(client = %peer, error = %e, "upgrade not completed");
                return;
            }
        };
        let cancel = super::tunnel_cancel(&state, &route);
        let _active = super::GaugeGuard::new("proxyguard_tunnels_active");
        let stats = crate::relay::relay(
            TokioIo::new(client),
            TokioIo::new(upstream),
            state.idle_timeout,
            cancel,
        )
        .await;
        super::log_tunnel("upgrade", peer, &target, &route, started, &stats);
        drop(live);
    });
    Response::from_parts(head, Either::Right(Full::new(Bytes::new())))
}
