//! The admin API's request guard: `Host` must name the admin address,
//! `localhost`, an IP literal or an `[admin] hosts` entry (against DNS
//! rebinding); a state-changing call needs the token whatever the peer and
//! must not come from a foreign `Origin` (against CSRF); every response
//! carries a strict Content-Security-Policy.

use std::sync::{Arc, OnceLock};

use base64::Engine;
use http::{header, HeaderMap, HeaderValue, Method};
use sha2::{Digest, Sha256};

use crate::inbound::bans::Bans;

/// What the admin API needs to know for its checks.
pub struct AdminGuard {
    /// Extra accepted `Host` names (lowercase, without port).
    hosts: Vec<String>,
    /// Active inbound-auth bans, listed by `/status`.
    pub bans: Arc<Bans>,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("Host header does not name this admin API (set [admin] hosts to add a name)")]
    Host,
    #[error("cross-origin request refused")]
    Origin,
    #[error("this call changes state: it needs Authorization: Bearer <[admin] token>")]
    Token,
}

/// The host part of `host[:port]` / `[v6]:port`, lowercased.
fn host_part(authority: &str) -> String {
    let a = authority.trim();
    let host = if let Some(rest) = a.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        a.rsplit_once(':').map_or(a, |(h, p)| {
            if p.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                a
            }
        })
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

impl AdminGuard {
    pub fn new(hosts: &[String], bans: Arc<Bans>) -> Self {
        AdminGuard {
            hosts: hosts.iter().map(|h| host_part(h)).collect(),
            bans,
        }
    }

    fn host_ok(&self, host: &str) -> bool {
        let h = host_part(host);
        // DNS rebinding needs a name: IP literals cannot be rebound.
        h == "localhost" || h.parse::<std::net::IpAddr>().is_ok() || self.hosts.contains(&h)
    }

    /// Checks `Host` and `Origin` and, for anything but GET/HEAD, the token.
    pub fn check(
        &self,
        method: &Method,
        headers: &HeaderMap,
        token_ok: bool,
    ) -> Result<(), Refusal> {
        if let Some(h) = headers.get(header::HOST) {
            match h.to_str() {
                Ok(h) if self.host_ok(h) => {}
                _ => return Err(Refusal::Host),
            }
        }
        let safe = matches!(*method, Method::GET | Method::HEAD);
        if safe {
            return Ok(());
        }
        if let Some(o) = headers.get(header::ORIGIN) {
            let origin = o.to_str().unwrap_or("null");
            let authority = origin.split_once("://").map(|(_, rest)| rest).unwrap_or("");
            if authority.is_empty() || !self.host_ok(authority) {
                return Err(Refusal::Origin);
            }
            // Same host: the Origin must also match the Host we were sent.
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            if !host.is_empty() && !authority.eq_ignore_ascii_case(host) {
                return Err(Refusal::Origin);
            }
        }
        if !token_ok {
            return Err(Refusal::Token);
        }
        Ok(())
    }
}

fn sha256_source(html: &str, open: &str, close: &str) -> Option<String> {
    let start = html.find(open)? + open.len();
    let end = start + html[start..].find(close)?;
    let digest = Sha256::digest(&html.as_bytes()[start..end]);
    Some(format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    ))
}

/// A Content-Security-Policy allowing nothing but `page`'s own inline
/// script and style (by hash) and fetches to this origin.
fn build_csp(page: &str) -> String {
    let script = sha256_source(page, "<script>", "</script>").unwrap_or("'none'".into());
    let style = sha256_source(page, "<style>", "</style>").unwrap_or("'none'".into());
    format!(
        "default-src 'none'; script-src {script}; style-src {style}; connect-src 'self'; \
         img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// The status page's Content-Security-Policy (computed once).
pub fn csp() -> &'static str {
    static CSP: OnceLock<String> = OnceLock::new();
    CSP.get_or_init(|| build_csp(super::PAGE))
}

/// Adds the security headers every admin response carries.
pub fn secure_headers(h: &mut HeaderMap) {
    if let Ok(v) = HeaderValue::from_str(csp()) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn host_origin_and_token_rules() {
        let bans = Arc::new(Bans::new(Default::default()));
        let g = AdminGuard::new(&["admin.corp.example".into()], bans);
        let get = Method::GET;
        let post = Method::POST;
        for host in [
            "127.0.0.1:9090",
            "localhost:9090",
            "[::1]:9090",
            "admin.corp.example:9090",
            "LOCALHOST",
        ] {
            assert_eq!(
                g.check(&get, &headers(&[("host", host)]), false),
                Ok(()),
                "{host}"
            );
        }
        assert_eq!(
            g.check(&get, &headers(&[("host", "evil.example:9090")]), true),
            Err(Refusal::Host)
        );
        assert_eq!(
            g.check(&post, &headers(&[("host", "127.0.0.1:9090")]), false),
            Err(Refusal::Token)
        );
        assert_eq!(
            g.check(&post, &headers(&[("host", "127.0.0.1:9090")]), true),
            Ok(())
        );
        let cross = headers(&[
            ("host", "127.0.0.1:9090"),
            ("origin", "http://evil.example"),
        ]);
        assert_eq!(g.check(&post, &cross, true), Err(Refusal::Origin));
        let null = headers(&[("host", "127.0.0.1:9090"), ("origin", "null")]);
        assert_eq!(g.check(&post, &null, true), Err(Refusal::Origin));
        let other_port = headers(&[
            ("host", "127.0.0.1:9090"),
            ("origin", "http://127.0.0.1:8000"),
        ]);
        assert_eq!(g.check(&post, &other_port, true), Err(Refusal::Origin));
        let same = headers(&[
            ("host", "127.0.0.1:9090"),
            ("origin", "http://127.0.0.1:9090"),
        ]);
        assert_eq!(g.check(&post, &same, true), Ok(()));
    }

    #[test]
    fn csp_hashes_the_inline_page_parts() {
        let page = "<style>a{}</style><script>go()</script>";
        let c = build_csp(page);
        let want = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(b"go()"));
        assert!(c.contains(&format!("script-src 'sha256-{want}'")), "{c}");
        assert!(!c.contains("unsafe-inline"));
        assert!(csp().contains("script-src 'sha256-"), "{}", csp());
    }
}
