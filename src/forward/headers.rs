//! Header hygiene and request building for plain-HTTP forwarding, and how
//! to read an upstream proxy's answer.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use hyper::body::Incoming;

use std::sync::Arc;

use super::expect::ContinueGate;
use super::OutBody;
use crate::upstream::{ConnectError, Target};

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the proxy credentials, which
/// must never travel further.
const HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including those named in `Connection`.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    let listed: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .chain(h.get_all("proxy-connection").iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in listed {
        h.remove(n);
    }
    for n in HOP {
        h.remove(*n);
    }
}

pub(super) fn idempotent(m: &http::Method) -> bool {
    matches!(
        *m,
        http::Method::GET
            | http::Method::HEAD
            | http::Method::OPTIONS
            | http::Method::TRACE
            | http::Method::PUT
            | http::Method::DELETE
    )
}

/// A 5xx that the upstream proxy produced itself about its path to the
/// origin (not the origin's own answer passed through): 502/504, or a 500/503
/// carrying a proxy's error signature (squid `X-Squid-Error`, tinyproxy
/// "Unable to connect", privoxy's error page).
pub(super) fn proxy_gateway_error(resp: &Response<Incoming>) -> bool {
    match resp.status().as_u16() {
        502 | 504 => true,
        500 | 503 => {
            let reason = resp
                .extensions()
                .get::<hyper::ext::ReasonPhrase>()
                .map(|r| String::from_utf8_lossy(r.as_bytes()).to_ascii_lowercase())
                .unwrap_or_default();
            resp.headers().contains_key("x-squid-error")
                || reason.contains("unable to connect")
                || reason.contains("privoxy")
        }
        _ => false,
    }
}

/// The upstream proxy's own 407 (its credentials, never meant for our
/// client) as the error that counts against it.
pub(super) fn proxy_auth_error(resp: &Response<Incoming>, had_auth: bool) -> ConnectError {
    let scheme = resp
        .headers()
        .get(header::PROXY_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or("unknown")
        .to_string();
    if had_auth {
        ConnectError::ProxyAuthRejected { scheme }
    } else {
        ConnectError::ProxyAuthRequired { scheme }
    }
}

pub(super) fn build(
    parts: &http::request::Parts,
    target: &Target,
    absolute: bool,
    proxy_auth: Option<&str>,
    body: OutBody,
) -> Request<OutBody> {
    let uri = if absolute {
        parts.uri.clone()
    } else {
        parts
            .uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or("/")
            .parse::<Uri>()
            .unwrap_or_else(|_| Uri::from_static("/"))
    };
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_11;
    *req.headers_mut() = parts.headers.clone();
    // RFC 9112 §3.2.2: a proxy replaces Host with the target URI's host.
    let host = match parts.uri.authority() {
        Some(a) => a.as_str().rsplit('@').next().unwrap_or("").to_string(),
        None if target.port == 80 => target.host.to_string(),
        None => target.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&host) {
        req.headers_mut().insert(header::HOST, v);
    }
    if let Some(a) = proxy_auth {
        if let Ok(v) = HeaderValue::from_str(a) {
            req.headers_mut().insert(header::PROXY_AUTHORIZATION, v);
        }
    }
    if let Some(gate) = parts.extensions.get::<Arc<ContinueGate>>() {
        let gate = gate.clone();
        hyper::ext::on_informational(&mut req, move |r| {
            if r.status() == http::StatusCode::CONTINUE {
                gate.go();
            }
        });
    }
    req
}
