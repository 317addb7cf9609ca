//! Upgrades through plain forwarding (`Connection: Upgrade`, e.g. a
//! WebSocket handshake in absolute form). The request keeps its upgrade
//! headers and goes out once, on a fresh connection through the pool as
//! usual (direct or via an upstream): it is never pooled, never hedged and
//! never retried once sent (only dialling fails over, as for any request).
//! A `101 Switching Protocols` hands the upstream's socket to the caller,
//! which relays it as a tunnel; any other answer is a normal response.

use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Incoming};

use super::headers::{build, proxy_auth_error};
use super::{
    member, strip_hop_by_hop, watch_body, ForwardError, ForwardedBody, Forwarder, OutBody,
};
use crate::body::{ClientBody, IdleBody};
use crate::pool::Outcome;
use crate::route::{NextHop, Router};
use crate::upstream::Target;

/// How the upstream answered an upgrade request.
pub enum Upgrade {
    /// `101 Switching Protocols`: the head to send the client, and the
    /// upstream's side of the tunnel once hyper hands it over.
    Switched {
        head: http::response::Parts,
        upstream: hyper::upgrade::OnUpgrade,
        route: NextHop,
    },
    /// Anything else, passed through as a normal response.
    Answered {
        resp: Response<ForwardedBody>,
        route: NextHop,
    },
}

/// True for a request asking to switch protocols: an `Upgrade` header and
/// `upgrade` among the `Connection` tokens.
pub fn wants_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes the hop-by-hop headers except the upgrade pair this hop carries.
fn keep_upgrade_only(h: &mut HeaderMap) {
    let upgrade: Vec<HeaderValue> = h.get_all(header::UPGRADE).iter().cloned().collect();
    strip_hop_by_hop(h);
    for v in upgrade {
        h.append(header::UPGRADE, v);
    }
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

impl Forwarder {
    /// Sends an upgrade request to `target` once.
    pub async fn upgrade(
        &self,
        router: &Router,
        target: &Target,
        req: Request<Incoming>,
    ) -> Result<Upgrade, ForwardError> {
        let (mut parts, body) = req.into_parts();
        keep_upgrade_only(&mut parts.headers);
        self.add_via(&mut parts.headers);
        let body: OutBody = if body.is_end_stream() {
            Either::Right(Empty::new())
        } else {
            Either::Left(super::Gated::open(ClientBody::new(body).0))
        };
        let (hc, route) = Box::pin(router.http_conn(router.plain_plan(target), target)).await?;
        let m = member(&route).cloned();
        let report = |outcome: Outcome| {
            if let Some(m) = &m {
                router.pool.report(m, outcome);
            }
        };
        let broken = |error: String| {
            report(Outcome::broke_before_answer());
            ForwardError::Upstream(error)
        };
        let mut tx = crate::http_client::handshake_with_upgrades::<_, OutBody>(hc.conn)
            .await
            .map_err(|e| broken(e.to_string()))?;
        let req = build(
            &parts,
            target,
            hc.absolute_form,
            hc.proxy_authorization.as_deref(),
            body,
        );
        let limit = router.ctx.timeouts.response_head;
        let mut resp = match tokio::time::timeout(limit, tx.send_request(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(broken(e.to_string())),
            Err(_) => {
                report(Outcome::no_answer_within(limit));
                return Err(ForwardError::Timeout {
                    upstream: route.name().to_string(),
                    after: limit,
                });
            }
        };
        if let (true, Some(m), StatusCode::PROXY_AUTHENTICATION_REQUIRED) =
            (hc.absolute_form, &m, resp.status())
        {
            let err = proxy_auth_error(&resp, hc.proxy_authorization.is_some());
            router.pool.report(m, Outcome::UpstreamFault(err.clone()));
            return Err(ForwardError::Connect(err));
        }
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let upstream = hyper::upgrade::on(&mut resp);
            let (mut head, _) = resp.into_parts();
            keep_upgrade_only(&mut head.headers);
            self.add_via(&mut head.headers);
            return Ok(Upgrade::Switched {
                head,
                upstream,
                route,
            });
        }
        let (mut p, b) = resp.into_parts();
        self.add_via(&mut p.headers);
        let mut b = IdleBody::new(b, router.ctx.timeouts.body_idle);
        if let Some(m) = &m {
            b = b.on_end(watch_body(Arc::clone(m), router, target));
        }
        Ok(Upgrade::Answered {
            resp: Response::from_parts(p, b),
            route,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn upgrade_needs_both_headers_and_keeps_only_its_pair() {
        assert!(wants_upgrade(&headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket")
        ])));
        assert!(!wants_upgrade(&headers(&[("upgrade", "websocket")])));
        assert!(!wants_upgrade(&headers(&[("connection", "upgrade")])));
        let mut h = headers(&[
            ("connection", "Upgrade, x-secret"),
            ("upgrade", "websocket"),
            ("x-secret", "1"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("keep-alive", "timeout=5"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        keep_upgrade_only(&mut h);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert!(h.contains_key("sec-websocket-key"));
        for gone in ["x-secret", "proxy-authorization", "keep-alive"] {
            assert!(!h.contains_key(gone), "{gone} kept");
        }
    }
}
