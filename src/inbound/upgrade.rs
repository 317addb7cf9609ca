//! The client side of an upgrade through forwarding: the request goes to
//! the upstream once ([`Forwarder::upgrade`](crate::forward::Forwarder)),
//! and after `101 Switching Protocols` the client's connection and the
//! upstream's are relayed as a tunnel — the same relay, idle timeout,
//! connection slot, drain and accounting as a CONNECT tunnel (logged and
//! counted as tunnel kind `upgrade`). Any other answer is passed through.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::http::{forward_error, Access, Admitted, RespBody};
use super::tunnel::Tunnel;
use super::{ConnCtx, Gateway};
use crate::acl;
use crate::forward::{strip_hop_by_hop, Upgrade};

pub(super) async fn forward(
    mut req: Request<Incoming>,
    Admitted { target, scope }: Admitted,
    ctx: Arc<ConnCtx>,
    state: Arc<Gateway>,
    log: Access,
) -> Response<RespBody> {
    let client_side = hyper::upgrade::on(&mut req);
    let answer = acl::scoped(scope, state.forwarder.upgrade(&state.router, &target, req)).await;
    let (head, upstream, route) = match answer {
        Err(e) => return forward_error(e, &log),
        Ok(Upgrade::Answered { resp, route }) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            log.log(route.name(), parts.status.as_u16(), "ok");
            return Response::from_parts(parts, Either::Left(body));
        }
        Ok(Upgrade::Switched {
            head,
            upstream,
            route,
        }) => (head, upstream, route),
    };
    log.log(route.name(), 101, "ok");
    let both_sides = async move { tokio::try_join!(client_side, upstream) };
    let st = state.clone();
    super::tunnel::spawn(
        ctx,
        &state,
        both_sides,
        move |(client, upstream)| async move {
            let tunnel = Tunnel {
                kind: "upgrade",
                peer: log.peer,
                target: &target,
                route: &route,
                started: log.started,
            };
            tunnel
                .run(&st, |watch, cancel| {
                    crate::relay::relay(TokioIo::new(client), TokioIo::new(upstream), watch, cancel)
                })
                .await
        },
    );
    Response::from_parts(head, Either::Right(Full::new(Bytes::new())))
}
