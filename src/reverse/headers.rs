//! The request a backend receives: forwarded headers, the Host (or HTTP/2
//! `:authority`), and on-the-fly API Gateway signing.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Uri, Version};

use super::ReverseRoute;
use crate::pool::Member;
use crate::upstream::Scheme;

impl ReverseRoute {
    pub(super) fn forwarded_headers(&self, h: &mut HeaderMap, peer: SocketAddr, tls: bool) {
        let proto = if tls { "https" } else { "http" };
        let ip = peer.ip().to_string();
        let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip.clone(),
        };
        let host = h
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Ok(v) = HeaderValue::from_str(&xff) {
            h.insert("x-forwarded-for", v);
        }
        h.insert("x-forwarded-proto", HeaderValue::from_static(proto));
        let node = if peer.is_ipv6() {
            format!("\"[{ip}]\"")
        } else {
            ip
        };
        let mut fwd = format!("for={node};proto={proto}");
        if let Some(hst) = &host {
            if let Ok(v) = HeaderValue::from_str(hst) {
                h.insert("x-forwarded-host", v);
            }
            fwd.push_str(&format!(";host=\"{hst}\""));
        }
        if let Ok(v) = HeaderValue::from_str(&fwd) {
            h.append(header::FORWARDED, v);
        }
    }

    pub(super) fn sign(
        &self,
        parts: &mut http::request::Parts,
        body: &Bytes,
    ) -> Result<(), String> {
        let (Some(sg), Some(secret)) = (&self.cfg.sign, &self.secret) else {
            return Ok(());
        };
        let url = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        let mut req = crate::signer::SignRequest::new(parts.method.as_str(), url);
        for (k, v) in parts.headers.iter() {
            if let Ok(v) = v.to_str() {
                req = req.with_header(k.as_str(), v);
            }
        }
        req = req.with_body(body.to_vec());
        let method = match sg.signature_method.as_deref() {
            Some(m) if m.eq_ignore_ascii_case("hmacsha1") => {
                crate::signer::apigw::SignatureMethod::HmacSha1
            }
            _ => crate::signer::apigw::SignatureMethod::HmacSha256,
        };
        let params = crate::signer::apigw::ApigwParams {
            app_key: sg.key.clone(),
            signature_method: method,
            stage: sg.stage.clone(),
            extra_signed_headers: sg.headers.clone(),
            timestamp_ms: None,
            nonce: None,
        };
        let headers =
            crate::signer::apigw::sign(&req, secret, &params).map_err(|e| e.to_string())?;
        for (k, v) in headers {
            let name = header::HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?;
            let val = HeaderValue::from_str(&v).map_err(|e| e.to_string())?;
            parts.headers.insert(name, val);
        }
        Ok(())
    }

    pub(super) fn host_for(
        &self,
        m: &Member,
        client_host: Option<&HeaderValue>,
    ) -> Option<HeaderValue> {
        match self.cfg.host.as_deref() {
            Some("keep") => client_host.cloned(),
            Some(lit) => HeaderValue::from_str(lit).ok(),
            None => {
                let s = m.spec();
                let default = if s.scheme == Scheme::Https { 443 } else { 80 };
                let h = if s.port == default {
                    s.host.to_string()
                } else {
                    format!("{}:{}", s.host, s.port)
                };
                HeaderValue::from_str(&h).ok()
            }
        }
    }

    /// The request for backend `m`: origin-form with `Host` over HTTP/1.1,
    /// absolute (`:scheme`, `:authority`) over HTTP/2.
    pub(super) fn backend_request<B>(
        &self,
        m: &Member,
        parts: &http::request::Parts,
        client_host: Option<&HeaderValue>,
        body: B,
        h2: bool,
    ) -> Request<B> {
        let mut r = Request::new(body);
        *r.method_mut() = parts.method.clone();
        *r.headers_mut() = parts.headers.clone();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let host = self.host_for(m, client_host);
        if h2 {
            let scheme = if m.spec().scheme == Scheme::Https {
                "https"
            } else {
                "http"
            };
            let authority = host
                .as_ref()
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
                .unwrap_or_else(|| format!("{}:{}", m.spec().host, m.spec().port));
            *r.uri_mut() = format!("{scheme}://{authority}{path}")
                .parse()
                .unwrap_or_else(|_| Uri::from_static("/"));
            *r.version_mut() = Version::HTTP_2;
            r.headers_mut().remove(header::HOST);
        } else {
            *r.uri_mut() = path.parse().unwrap_or_default();
            if let Some(h) = host {
                r.headers_mut().insert(header::HOST, h);
            }
        }
        r
    }
}
