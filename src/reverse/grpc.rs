//! gRPC-aware forwarding: a call goes to another backend only when that is
//! safe — the connection failed before any response, or the backend said
//! UNAVAILABLE (`grpc-status: 14`) before sending any message — never after
//! it started answering. The call's deadline is the route's `timeout` or the
//! client's `grpc-timeout`, whichever is shorter; gateway-made errors are
//! gRPC-shaped (HTTP 200, `grpc-status`, `grpc-message`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use http::header::{HeaderMap, HeaderValue};
use http::Response;
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::Incoming;

use super::answer::{grpc_error, GrpcCode};
use super::attempt::Dial;
use super::backend::AttemptError;
use super::replay::Replay;
use super::{BoxError, RespBody, ReverseRoute};

/// A gRPC call by its content type (`application/grpc`, `application/grpc+proto`, …;
/// not gRPC-Web, which is a different framing).
pub fn is_grpc(h: &HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let ct = ct.to_ascii_lowercase();
            ct.starts_with("application/grpc") && !ct.starts_with("application/grpc-web")
        })
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (H M S m u n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let v = v.trim();
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Encodes what is left of a deadline as a `grpc-timeout` value.
pub fn encode_grpc_timeout(d: Duration) -> String {
    let ms = d.as_millis().max(1);
    if ms <= 99_999_999 {
        format!("{ms}m")
    } else {
        format!("{}S", d.as_secs().min(99_999_999))
    }
}

/// The call's deadline: the route's timeout, or the client's shorter one.
pub fn call_deadline(route_timeout: Duration, h: &HeaderMap) -> Duration {
    h.get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .map_or(route_timeout, |t| t.min(route_timeout))
}

fn grpc_status(h: &HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.trim().parse().ok()
}

/// What the first part of a backend's answer says.
enum Verdict {
    /// UNAVAILABLE before any message: another backend may take the call.
    Unavailable(String),
    /// The backend answered: pass it on, whatever follows.
    Answer(Response<RespBody>),
}

fn message(h: &HeaderMap) -> String {
    h.get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Reads up to the first frame (bounded by `left`) to tell an UNAVAILABLE
/// that sent nothing from an answer that started.
async fn verdict(resp: Response<Incoming>, left: Duration) -> Verdict {
    if let Some(code) = grpc_status(resp.headers()) {
        // Trailers-only: the status is in the head, there is no message.
        if code == GrpcCode::Unavailable as u32 {
            return Verdict::Unavailable(message(resp.headers()));
        }
        return Verdict::Answer(resp.map(super::incoming_body));
    }
    if matches!(resp.status().as_u16(), 502..=504) {
        // Not a gRPC answer (a proxy in front of the backend): no message sent.
        return Verdict::Unavailable(format!("HTTP {}", resp.status()));
    }
    let (parts, mut body) = resp.into_parts();
    let first = match tokio::time::timeout(left, body.frame()).await {
        Err(_) => None,
        Ok(None) => None,
        Ok(Some(Err(e))) => return Verdict::Unavailable(format!("reset before any message: {e}")),
        Ok(Some(Ok(f))) => {
            if let Some(t) = f.trailers_ref() {
                if grpc_status(t) == Some(GrpcCode::Unavailable as u32) {
                    return Verdict::Unavailable(message(t));
                }
            }
            Some(f)
        }
    };
    // The frame already read, then the rest as it comes.
    let rest = BodyStream::new(body).map(|r| r.map_err(BoxError::from));
    let body = StreamBody::new(futures_util::stream::iter(first.map(Ok)).chain(rest));
    Verdict::Answer(Response::from_parts(parts, body.boxed_unsync()))
}

impl ReverseRoute {
    /// Forwards one gRPC call (`parts` already carries the forwarded headers).
    pub(super) async fn handle_grpc(
        self: Arc<Self>,
        mut parts: http::request::Parts,
        client_host: Option<HeaderValue>,
        body: Incoming,
        peer: SocketAddr,
        started: Instant,
    ) -> Response<RespBody> {
        let deadline = call_deadline(self.cfg.timeout.0, &parts.headers);
        let end = started + deadline;
        let replay = Replay::new(body, self.cfg.retry_body_limit);
        let plan = self.plan();
        let mut last_err: Option<String> = None;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let Some(reader) = replay.reader() else {
                break; // a large streamed body: no second attempt
            };
            if let Ok(v) = HeaderValue::from_str(&encode_grpc_timeout(left)) {
                parts.headers.insert("grpc-timeout", v);
            }
            let next = self.connect_next(&plan, left, Dial::Request, &mut last_err);
            let Some(c) = next.await else {
                break;
            };
            let m = c.m.clone();
            let mut reader = Some(reader);
            let mut make = || reader.take().map(|r| r.boxed_unsync());
            let left = end.saturating_duration_since(Instant::now());
            let sent = self
                .exchange_within(c, &parts, client_host.as_ref(), &mut make, left)
                .await;
            let resp = match sent {
                Ok(resp) => resp,
                Err(e) => {
                    last_err = Some(self.failed(&m, &e));
                    if matches!(e, AttemptError::TimedOut(_)) {
                        break;
                    }
                    continue;
                }
            };
            let left = end.saturating_duration_since(Instant::now());
            match verdict(resp, left).await {
                Verdict::Unavailable(why) => {
                    self.refused_answer(&m, 503, "grpc-status 14");
                    last_err = Some(format!("{}: UNAVAILABLE {why}", m.name()));
                }
                Verdict::Answer(mut resp) => {
                    crate::forward::strip_hop_by_hop(resp.headers_mut());
                    tracing::info!(target: "access", kind = "reverse", client = %peer, method = %parts.method, path = %parts.uri, backend = m.name(), status = resp.status().as_u16(), grpc = true, duration_ms = started.elapsed().as_millis() as u64, "request");
                    return resp;
                }
            }
        }
        let why = last_err.unwrap_or_else(|| "no backend available".into());
        tracing::warn!(target: "access", kind = "reverse", client = %peer, path = %parts.uri, grpc = true, duration_ms = started.elapsed().as_millis() as u64, error = %why, "no backend could serve");
        if Instant::now() >= end {
            return grpc_error(
                GrpcCode::DeadlineExceeded,
                &format!("proxyguard: deadline of {deadline:?} passed: {why}"),
            );
        }
        grpc_error(GrpcCode::Unavailable, &format!("proxyguard: {why}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5000u"), Some(Duration::from_millis(5)));
        assert_eq!(parse_grpc_timeout("123456789m"), None, "at most 8 digits");
        assert_eq!(parse_grpc_timeout("10x"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("-1S"), None);
        assert_eq!(encode_grpc_timeout(Duration::from_millis(1500)), "1500m");
        assert_eq!(encode_grpc_timeout(Duration::from_micros(10)), "1m");
    }

    #[test]
    fn deadline_is_the_shorter() {
        let mut h = HeaderMap::new();
        let ten = Duration::from_secs(10);
        assert_eq!(call_deadline(ten, &h), ten);
        h.insert("grpc-timeout", HeaderValue::from_static("250m"));
        assert_eq!(call_deadline(ten, &h), Duration::from_millis(250));
        h.insert("grpc-timeout", HeaderValue::from_static("1M"));
        assert_eq!(call_deadline(ten, &h), ten);
    }

    #[test]
    fn grpc_detection() {
        let mut h = HeaderMap::new();
        assert!(!is_grpc(&h));
        h.insert("content-type", HeaderValue::from_static("application/grpc"));
        assert!(is_grpc(&h));
        h.insert(
            "content-type",
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc(&h));
        h.insert(
            "content-type",
            HeaderValue::from_static("application/grpc-web"),
        );
        assert!(!is_grpc(&h));
    }
}
