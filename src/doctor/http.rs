//! The http step: GET the URL (absolute-form to an HTTP proxy, else through
//! the tunnel) and interpret the answer (proxy errors, API Gateway errors).

use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use super::walk::{Failure, Fetched, Io, Walk};
use super::{bracket, interpret, ms, Cause, Plan};
use crate::upstream::{http_connect, ConnectError, UpstreamSpec};

/// A response as the step saw it.
struct Answer {
    parts: http::response::Parts,
    body: Bytes,
}

/// Sends the request and reads the whole answer.
pub(super) async fn run(
    w: &mut Walk,
    plan: &Plan,
    proxy: Option<&UpstreamSpec>,
    absolute_form: bool,
    io: Box<dyn Io>,
) -> Result<Fetched, Failure> {
    let t = w.timeout;
    let http_start = Instant::now();
    let started = w.started;
    let fetched = async {
        let (mut tx, c) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = c.await;
        });
        let auth = proxy
            .and_then(|p| p.credentials.as_ref())
            .map(http_connect::basic_auth);
        let req = get_request(plan, absolute_form, auth.as_deref())?;
        let resp = tx.send_request(req).await.map_err(|e| chain(&e))?;
        let ttfb = started.elapsed();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| chain(&e))?.to_bytes();
        Ok::<_, String>((Answer { parts, body }, ttfb))
    };
    match tokio::time::timeout(t, fetched).await {
        Err(_) => {
            w.step(
                "http",
                false,
                http_start.elapsed(),
                format!("no response within {t:?}"),
            );
            let c = if proxy.is_some() && absolute_form {
                Cause::ProxyTimeout
            } else {
                Cause::TargetTimeout
            };
            Err(Failure::new(
                c,
                "The server accepted the connection but did not answer.",
            ))
        }
        Ok(Err(e)) => {
            w.step("http", false, http_start.elapsed(), e.clone());
            let c = if proxy.is_some() {
                Cause::ProxyReset
            } else {
                Cause::TargetRefused
            };
            Err(Failure::new(
                c,
                format!("The connection broke before a response: {e}."),
            ))
        }
        Ok(Ok((a, ttfb))) => {
            w.timings.starttransfer = Some(ms(ttfb));
            let status = a.parts.status.as_u16();
            let detail = format!(
                "GET {} → {} {} ({} bytes), first byte at {:.1} ms",
                plan.url,
                status,
                a.parts.status.canonical_reason().unwrap_or(""),
                a.body.len(),
                ms(ttfb)
            );
            match judge(&a, proxy, absolute_form) {
                Ok(()) => {
                    w.step("http", true, http_start.elapsed(), detail);
                    Ok(Fetched { status })
                }
                Err((mut f, extra)) => {
                    w.step(
                        "http",
                        false,
                        http_start.elapsed(),
                        format!("{detail}{extra}"),
                    );
                    f.status = Some(status);
                    Err(f)
                }
            }
        }
    }
}

/// An error and its sources, e.g. "connection error: Connection reset by peer".
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        src = s.source();
    }
    out
}

/// The doctor's GET of the plan's URL: absolute-form with `proxy_auth`
/// (`Proxy-Authorization`) to an HTTP proxy, origin-form otherwise.
pub(super) fn get_request(
    plan: &Plan,
    absolute_form: bool,
    proxy_auth: Option<&str>,
) -> Result<http::Request<Empty<Bytes>>, String> {
    let url = &plan.url;
    let path = if absolute_form {
        url.as_str().to_string()
    } else {
        let mut p = url.path().to_string();
        if let Some(q) = url.query() {
            p.push('?');
            p.push_str(q);
        }
        p
    };
    let host_header = if url.port().is_some() {
        format!("{}:{}", bracket(&plan.target.host.bare()), plan.target.port)
    } else {
        plan.target.host.bare()
    };
    let mut req = http::Request::get(path)
        .header(http::header::HOST, host_header)
        .header(
            http::header::USER_AGENT,
            concat!("proxyguard-doctor/", env!("CARGO_PKG_VERSION")),
        );
    if let Some(a) = proxy_auth.filter(|_| absolute_form) {
        req = req.header(http::header::PROXY_AUTHORIZATION, a);
    }
    req.body(Empty::new()).map_err(|e| e.to_string())
}

fn header(a: &Answer, name: http::header::HeaderName) -> Option<&str> {
    a.parts.headers.get(name).and_then(|v| v.to_str().ok())
}

/// True when an absolute-form answer came from the proxy, not the origin.
fn from_proxy(a: &Answer) -> bool {
    let server = header(a, http::header::SERVER)
        .unwrap_or("")
        .to_ascii_lowercase();
    a.parts.headers.contains_key("x-squid-error")
        || a.parts.headers.contains_key("proxy-status")
        || server.contains("tinyproxy")
        || server.contains("squid")
        || String::from_utf8_lossy(&a.body)
            .to_ascii_lowercase()
            .contains("tinyproxy")
}

/// Ok, or the failure plus extra detail for the step.
fn judge(
    a: &Answer,
    proxy: Option<&UpstreamSpec>,
    absolute_form: bool,
) -> Result<(), (Failure, String)> {
    let status = a.parts.status.as_u16();
    if let Some(msg) = a
        .parts
        .headers
        .get("x-ca-error-message")
        .and_then(|v| v.to_str().ok())
    {
        return Err((
            gateway_error(a, msg),
            format!("; X-Ca-Error-Message: {msg}"),
        ));
    }
    let by_proxy = absolute_form && from_proxy(a);
    if absolute_form && (status == 407 || (status == 401 && by_proxy)) {
        let name = if status == 407 {
            http::header::PROXY_AUTHENTICATE
        } else {
            http::header::WWW_AUTHENTICATE
        };
        let scheme = header(a, name).unwrap_or("unknown").to_string();
        let e = if proxy.and_then(|p| p.credentials.as_ref()).is_some() {
            ConnectError::ProxyAuthRejected { scheme }
        } else {
            ConnectError::ProxyAuthRequired { scheme }
        };
        let head = http_connect::ReplyHead {
            status,
            reason: String::new(),
            headers: Vec::new(),
        };
        return Err((interpret::auth_failure(&e, status, &head), String::new()));
    }
    if by_proxy && status >= 500 {
        let f = Failure::new(
            Cause::ProxyUpstreamError,
            format!("The proxy answered {status}: it could not reach the target."),
        );
        return Err((f, String::new()));
    }
    if by_proxy && status == 403 {
        let f = Failure::new(
            Cause::ProxyForbidden,
            "The proxy refused the request by policy (403).",
        );
        return Err((f, String::new()));
    }
    if status >= 400 {
        let f = Failure::new(Cause::HttpError, format!("The server answered {status}."));
        return Err((f, String::new()));
    }
    Ok(())
}

/// An Alibaba Cloud API Gateway error (X-Ca-Error-Message).
fn gateway_error(a: &Answer, msg: &str) -> Failure {
    use crate::signer::verify::{parse_gateway_error, GatewayError};
    let status = a.parts.status.as_u16();
    let skew = header(a, http::header::DATE)
        .and_then(|d| httpdate::parse_http_date(d).ok())
        .map(
            |server| match std::time::SystemTime::now().duration_since(server) {
                Ok(ahead) => ahead.as_secs() as i64,
                Err(e) => -(e.duration().as_secs() as i64),
            },
        );
    let skew_txt = skew
        .map(|s| {
            format!(
                " This machine's clock is {} s {} the server's Date.",
                s.abs(),
                if s >= 0 { "ahead of" } else { "behind" }
            )
        })
        .unwrap_or_default();
    match parse_gateway_error(msg) {
        GatewayError::InvalidSignature { server_sts } => Failure::new(
            Cause::SignatureMismatch,
            format!(
                "The API Gateway rejected the signature ({msg}).{}",
                server_sts
                    .map(|s| format!(" Server StringToSign: {s}"))
                    .unwrap_or_default()
            ),
        ),
        GatewayError::TimestampExpired | GatewayError::InvalidTimestamp => Failure::new(
            Cause::TimestampExpired,
            format!("The API Gateway says the timestamp is invalid or expired ({msg}).{skew_txt}"),
        ),
        _ => Failure::new(
            Cause::HttpError,
            format!("The API Gateway answered {status}: {msg}."),
        ),
    }
}
