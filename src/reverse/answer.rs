//! Answers the gateway makes itself: plain text errors, the route's
//! fallback (last good GET or a static answer), and gRPC-shaped errors
//! (HTTP 200, `grpc-status`, `grpc-message`) for gRPC calls.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Response, StatusCode};

use super::{full_body, RespBody, ReverseRoute};

/// gRPC status codes the gateway produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcCode {
    DeadlineExceeded = 4,
    Unavailable = 14,
}

/// grpc-message is percent-encoded: controls, `%` and non-ASCII (gRPC over
/// HTTP/2 spec).
const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

pub(super) fn text(status: StatusCode, msg: &str) -> Response<RespBody> {
    let mut r = Response::new(full_body(Bytes::from(format!("{msg}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A trailers-only gRPC answer: HTTP 200 with the status in the headers.
pub(super) fn grpc_error(code: GrpcCode, msg: &str) -> Response<RespBody> {
    let mut r = Response::new(full_body(Bytes::new()));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(code as u16));
    let enc = percent_encoding::utf8_percent_encode(msg, GRPC_MESSAGE).to_string();
    if let Ok(v) = HeaderValue::from_str(&enc) {
        h.insert("grpc-message", v);
    }
    r
}

/// Whether `[route.fallback]` sets an answer: a table that only names a
/// `protocol` keeps the 502.
fn answers(fb: &crate::config::schema::RouteFallback) -> bool {
    let protocol_only =
        fb.protocol.is_some() && fb.cache_get.is_none() && fb.body.is_empty() && fb.status == 503;
    !protocol_only
}

fn proxy_status(why: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "proxyguard; error=destination_unavailable; details=\"{}\"",
        why.replace(['"', '\\'], "'")
    ))
    .ok()
}

impl ReverseRoute {
    /// `key` is None when the request may not be answered from the cache
    /// (it carries credentials).
    pub(super) fn fallback(
        &self,
        method: &Method,
        key: Option<&str>,
        why: String,
        peer: SocketAddr,
        started: Instant,
    ) -> Response<RespBody> {
        tracing::warn!(target: "access", kind = "reverse", client = %peer, duration_ms = started.elapsed().as_millis() as u64, error = %why, "no backend could serve");
        let ps = proxy_status(&why);
        let mut r = match self.cfg.fallback.as_ref().filter(|fb| answers(fb)) {
            Some(fb) => {
                if let (Some(age), true, Some(key)) = (fb.cache_get, *method == Method::GET, key) {
                    if let Some((status, headers, body, stored)) = self.cache.get(key, age.0) {
                        let mut r = Response::new(full_body(body));
                        *r.status_mut() = status;
                        *r.headers_mut() = headers;
                        let age_s = stored.elapsed().as_secs();
                        r.headers_mut()
                            .insert(header::AGE, HeaderValue::from(age_s));
                        r.headers_mut().insert(
                            header::WARNING,
                            HeaderValue::from_static("110 proxyguard \"Response is Stale\""),
                        );
                        if let Some(v) = ps {
                            r.headers_mut().insert("proxy-status", v);
                        }
                        return r;
                    }
                }
                text(
                    StatusCode::from_u16(fb.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                    &fb.body,
                )
            }
            None => text(
                StatusCode::BAD_GATEWAY,
                &format!("proxyguard: 502 Bad Gateway: {why}"),
            ),
        };
        if let Some(v) = ps {
            r.headers_mut().insert("proxy-status", v);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_errors_are_trailers_only_200s() {
        let r = grpc_error(GrpcCode::Unavailable, "no backend: a:1 refused 100%");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert_eq!(
            r.headers()["grpc-message"],
            "no backend: a:1 refused 100%25"
        );
        let r = grpc_error(GrpcCode::DeadlineExceeded, "late\n");
        assert_eq!(r.headers()["grpc-status"], "4");
        assert_eq!(r.headers()["grpc-message"], "late%0A");
    }
}
